"""The ``asyncsnap`` command: the Typer app, its commands (one module each) and ``main``.

No SQL here nor in any command module: each parses its options, calls one library
function through the envelope (``envelope.py``: ``AsyncsnapError`` becomes ``error:``/
``hint:`` lines on stderr and the documented exit code; anything else is a bug, exit 70,
``--debug`` shows the traceback; SIGINT and SIGTERM cancel the run, cleanup is the
library's) and renders the result (``reports.py``, ``progress.py``).

A fast start: this module and the command modules import only Typer, the standard library
and the ground floor (errors, text) at the top; the library, the envelope and
rich are imported inside the commands that use them, so ``--version``, ``--help`` and
shell completion (a run per Tab) import no asyncpg, DuckDB, pyarrow, obstore or rich.
``tests/test_fast_start.py`` pins the list of what they import.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from .. import cli
from ..errors import ExitCode
from . import compare, convert, diff, drop_slot, dump, inspect, prune, restore, verify
from .secrets import argv_secrets, hide_password_from_process_title, redact
from .startup import Command, Group

__all__ = ["app", "argv_secrets", "main", "redact"]

app = typer.Typer(
    name="asyncsnap",
    cls=Group,
    help="Consistent, concurrent PostgreSQL exports to checksummed NDJSON, and back.\n\n"
    "asyncsnap dump makes a backup, verify checks it, restore loads it; see each "
    "command's --help for its options and examples.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from ..version import __version__

        typer.echo(f"asyncsnap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """asyncsnap: consistent, concurrent PostgreSQL exports to checksummed NDJSON."""
    from ..scratch import remove_abandoned_scratch

    # Here, before any command starts a thread; not in main(): --version, --help and
    # completion start no thread and need not pay for ctypes.
    _tune_malloc(reads_blocks=ctx.invoked_subcommand in _READERS)

    # A run killed before its clean-up left its private scratch directory (of an
    # encrypted backup: plaintext); every run removes those whose process is gone.
    remove_abandoned_scratch()


# The commands, in the order --help lists them.
app.command("dump", cls=Command, short_help=dump.SHORT_HELP)(dump.dump_command)
app.command("restore", cls=Command, short_help=restore.SHORT_HELP)(restore.restore_command)
app.command("compare", cls=Command, short_help=compare.SHORT_HELP)(compare.compare_command)
app.command("diff", cls=Command, short_help=diff.SHORT_HELP)(diff.diff_command)
app.command("convert", cls=Command, short_help=convert.SHORT_HELP)(convert.convert_command)
app.command("verify", cls=Command, short_help=verify.SHORT_HELP)(verify.verify_command)
app.command("prune", cls=Command, short_help=prune.SHORT_HELP)(prune.prune_command)
app.command("inspect", cls=Command, short_help=inspect.SHORT_HELP)(inspect.inspect_command)
app.command("drop-slot", cls=Command, short_help=drop_slot.SHORT_HELP)(drop_slot.drop_slot_command)


# glibc's mallopt parameters (malloc.h: M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD),
# each with the environment variable and the GLIBC_TUNABLES name that set it (a user's own
# setting wins, even an empty one: glibc has applied it), and asyncsnap's value.
_MALLOC_TUNING = (
    # At most two malloc arenas. glibc gives threads that allocate at once arenas of their
    # own (up to eight per core), and the converter, zstd, age and obstore threads each
    # kept memory in theirs. Measured on 1 M mixed rows, five alternating pairs of whole
    # runs: peak RSS 67 -> 61 MiB to disk and 92 -> 86 MiB to S3, wall time 0.98 and 0.99
    # of before (within the runs' spread).
    (-8, "MALLOC_ARENA_MAX", "glibc.malloc.arena_max", 2),  # M_ARENA_MAX
)
# For the commands that read backups (``_READERS``): blocks of lines (4 MiB read,
# decompressed, cut at the last newline) from the heap, and up to 32 MiB of freed heap
# kept for the next ones, not given back to the kernel and faulted in again page by
# page: a verify of pgbench scale 50 (650 MB of lines) faulted 184,000 pages, 17,000 so
# (system time 0.20 -> 0.02 s, wall 1.25 -> 1.07 s; diff and compare 0.1-0.15 s less
# system time). Not for dump and restore, held to 64 MiB: the heap kept costs them more
# than the faults (a dump of pgbench 0.91 of the wall time, but peak RSS +3 MiB, and +11
# MiB for the mixed table to S3, in the benchmark).
_BLOCK_TUNING = (
    (-3, "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold", 8 << 20),
    (-1, "MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold", 32 << 20),
)
_READERS = frozenset({"verify", "compare", "diff"})


def _tune_malloc(*, reads_blocks: bool) -> None:
    """glibc's allocator set for threads (``_MALLOC_TUNING``), and for blocks of lines
    read by them when the command ``reads_blocks`` (``_BLOCK_TUNING``). Must run before
    threads start; a no-op off glibc."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return
    with contextlib.suppress(OSError, AttributeError):
        mallopt = ctypes.CDLL(None).mallopt
        tunables = {
            item.partition("=")[0] for item in os.environ.get("GLIBC_TUNABLES", "").split(":")
        }
        for parameter, variable, tunable, value in (
            *_MALLOC_TUNING,
            *(_BLOCK_TUNING if reads_blocks else ()),
        ):
            if variable not in os.environ and tunable not in tunables:
                mallopt(parameter, value)


def main() -> None:
    """Console-script entry point.

    Option errors Click finds (an unknown option, a value out of range) get the same
    ``error:``/``hint:`` lines (or JSON line) and exit code 2 as the library's usage errors,
    instead of Click's usage block.
    """
    hide_password_from_process_title(sys.argv)
    cli.ends_with_command = True  # see envelope.run_cancellable
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
    from .envelope import now, summary_base, write_summary
    from .progress import JsonLog, one_line

    command = exc.ctx.command_path if exc.ctx is not None else "asyncsnap"
    hint = f"see `{command} --help`"
    name = exc.ctx.info_name if exc.ctx is not None else None
    # Click quotes what it could not parse: a mistyped command line can hold a password.
    message = redact(exc.format_message(), None)
    summary = _argv_value("--summary-json")
    if summary and name in ("dump", "restore"):  # a cron job watching it sees this too
        problem = write_summary(
            Path(summary),
            {
                **summary_base(name),
                "ok": False,
                "exit_code": ExitCode.USAGE,
                "finished_at": now(),
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
