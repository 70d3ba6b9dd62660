"""The one envelope every command runs its library call in.

It runs the call on asyncio (``anyio.run(..., backend="asyncio")``: Typer has no async
commands, asyncpg is asyncio-only) with SIGINT and SIGTERM cancelling it; it turns a
failure into one ``error:`` line and one ``hint:`` line on stderr (or one JSON line with
``--log-format json``) and the documented exit code, an ``AsyncsnapError``'s own or 70 for
anything else (a bug: ``--debug`` shows the traceback); and it writes ``--summary-json``,
the run's outcome for scripts, on success and on failure alike. No password reaches any
of them (``secrets.redact``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import orjson
import typer
from rich.console import Console

from .. import cli
from ..errors import AsyncsnapError, ExitCode, OutputError, most_telling
from ..events import Event
from ..signals import cancel_on_signal, interrupted, quiet_engine
from .progress import JsonLog, LiveDisplay, PlainLog, one_line
from .secrets import Connection, redact

T = TypeVar("T")

# --summary-json's result fields, null when the run failed (README "Output for scripts").
DUMP_COUNTS = (
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
    "slot",
)
RESTORE_COUNTS = (
    "tables",
    "rows",
    "sequences",
    "large_objects",
    "refreshed",
    "increments",
    "changes",
    "seconds",
)


def now() -> str:
    """A summary's timestamp: UTC, milliseconds, ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def summary_base(command: str, **known: object) -> dict[str, object]:
    """--summary-json's fields before the run: every key of the command's summary (README
    "Output for scripts"), null until known, so a failure has the same keys."""
    if command == "dump":
        base: dict[str, object] = {"path": None, "partial": None, **dict.fromkeys(DUMP_COUNTS)}
    else:
        base = {"backup": None, "target": None, "dry_run": None, **dict.fromkeys(RESTORE_COUNTS)}
    return {"command": command, "started_at": now(), **base, **known}


def write_summary(path: Path | None, fields: dict[str, object], dsn: Connection) -> str | None:
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


def describe_failure(exc: BaseException) -> tuple[int, str, str | None]:
    """Exit code, message and hint for any failure, as ``print_failure`` prints them. A
    server's own HINT (asyncpg ends the error's text with it) joins ours, so there is one
    hint line."""
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


def print_failure(
    exc: BaseException, *, dsn: Connection, debug: bool, json_log: JsonLog | None = None
) -> typer.Exit:
    """Tell the failure (``--debug``: its traceback first) and return the exit to raise."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if debug:
        err.print(redact("".join(traceback.format_exception(exc)), dsn), markup=False)
    code, message, hint = describe_failure(exc)
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


def print_problems(lines: list[str], hint: str) -> None:
    """Findings that fail a command without an exception (compare's differences, verify's
    problems): one ``error:`` line each, then the one ``hint:`` line."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for line in lines:
        err.print(f"error: {one_line(line)}", markup=False)
    err.print(f"hint: {hint}", markup=False)


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
                try:
                    await cancel_on_signal(tg.cancel_scope, received)
                finally:
                    # The receiver just put the default actions back: without an await
                    # in between, no signal can land on them.
                    if finished and cli.ends_with_command:
                        signal.signal(signal.SIGINT, signal.SIG_IGN)
                        signal.signal(signal.SIGTERM, signal.SIG_IGN)

            tg.start_soon(watch)
            finished.append(await work())
            tg.cancel_scope.cancel()

    _route_library_logging(debug_log)
    # What the imports made lives as long as the process: out of the collector's sight, a
    # collection of the young objects the work makes (a run over ten thousand tables
    # makes many) does not also walk every module, function and class.
    gc.freeze()
    try:
        anyio.run(main, backend="asyncio")
    except BaseExceptionGroup as group:
        raise most_telling(group) from None
    if finished:
        return finished[0]
    raise interrupted(received[0] if received else signal.SIGINT, left)


@contextlib.contextmanager
def interrupted_by_signals(left: str) -> Iterator[None]:
    """For synchronous work in the main thread (``verify``): SIGINT and SIGTERM raise
    ``Interrupted``, ending with ``left``, where the work is, so the command ends with one
    error line and its exit code (SIGTERM's default action killed it without a word).
    Once the work has finished, a signal changes nothing (as ``run_cancellable``)."""

    def interrupt(signum: int, frame: object) -> None:
        quiet_engine()
        raise interrupted(signum, left)

    before = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    finished = False
    try:
        yield
        finished = True
    finally:
        for signum, handler in before.items():
            signal.signal(signum, signal.SIG_IGN if finished and cli.ends_with_command else handler)


def renderers(
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


def _debug_logger(json_log: JsonLog | None) -> Callable[[str], None]:
    """``--debug``: internal messages as a ``debug:`` line, or a JSON line."""
    if json_log is not None:
        return lambda message: json_log.write(
            {"level": "debug", "event": "debug", "message": message}
        )
    return lambda message: print(f"debug: {message}", file=sys.stderr, flush=True)


def use_endpoint(url: str | None) -> None:
    """``--endpoint-url``: the S3 endpoint for this run, before every other setting of
    one (``awsconfig``), as the AWS CLI's option is."""
    if url is None:
        return
    from ..storage.awsconfig import use_endpoint_option

    use_endpoint_option(url)


class Envelope:
    """One command's run: how its failure is told, and its ``--summary-json``.

    ``dsn``: what the command connects with, for redaction (the DSN argument as typed,
    then the checked connection). ``outcome``: the summary's fields so far (from
    ``summary_base``; a command fills in what it learns during the run); written only
    when ``summary_json`` is given. A command's use of it::

        env = Envelope(debug=debug)
        with env.guard():  # a failure: its error and hint lines, its exit code
            result = verify(backup_dir)
    """

    def __init__(
        self,
        *,
        debug: bool,
        dsn: Connection = None,
        log_format: str = "text",
        summary_json: Path | None = None,
        outcome: dict[str, object] | None = None,
    ) -> None:
        self.debug = debug
        self.dsn = dsn
        self.json_log = JsonLog(sys.stderr) if log_format == "json" else None
        self.summary_json = summary_json
        self.outcome: dict[str, object] = outcome if outcome is not None else {}

    def failure(self, exc: BaseException) -> BaseException:
        """Turn a failure into its message and exit code (and --summary-json, if asked):
        the exception for the command to raise."""
        if isinstance(exc, typer.Exit | SystemExit):
            return exc
        if isinstance(exc, KeyboardInterrupt):
            exc = interrupted(signal.SIGINT, "nothing was kept")
        code, message, hint = describe_failure(exc)
        problem = write_summary(
            self.summary_json,
            {
                **self.outcome,
                "ok": False,
                "exit_code": code,
                "finished_at": now(),
                "error": message,
                "hint": hint,
            },
            self.dsn,
        )
        if problem is not None and isinstance(exc, AsyncsnapError):  # said in the one hint line
            exc.hint = f"{exc.hint} (and {problem})" if exc.hint else problem
        return print_failure(exc, dsn=self.dsn, debug=self.debug, json_log=self.json_log)

    @contextlib.contextmanager
    def guard(self, catch: type[BaseException] = BaseException) -> Iterator[None]:
        """Failures of ``catch`` inside the block end the command as ``failure`` says.
        Checking options catches only ``AsyncsnapError``: anything else there is a bug
        whose traceback Python shows."""
        try:
            yield
        except catch as exc:
            raise self.failure(exc) from None

    def run(
        self,
        work: Callable[[], Awaitable[T]],
        live: LiveDisplay | None = None,
        *,
        left: str = "nothing was kept",
        on_failure: Callable[[], None] | None = None,
    ) -> T:
        """Run ``work`` as ``run_cancellable`` does (inside ``live``, when there is one),
        ``left`` saying what a cancelled run leaves behind; ``on_failure`` records what a
        failed run left in ``outcome`` before the failure is told."""
        debug_log = _debug_logger(self.json_log) if self.debug else None
        try:
            if live is None:
                return run_cancellable(work, left=left, debug_log=debug_log)
            with live:
                return run_cancellable(work, left=left, debug_log=debug_log)
        except BaseException as exc:
            if on_failure is not None:
                on_failure()
            raise self.failure(exc) from None

    def succeed(self, **results: object) -> None:
        """After a successful run: --summary-json with ``results``. A summary that could
        not be written fails the run (exit 4), since whatever watches that file would
        never learn of this run."""
        problem = write_summary(
            self.summary_json,
            {
                **self.outcome,
                "ok": True,
                "exit_code": 0,
                "finished_at": now(),
                **results,
                "error": None,
                "hint": None,
            },
            self.dsn,
        )
        if problem is not None:
            raise print_failure(
                OutputError(problem, hint="the run itself succeeded; fix the path for the next"),
                dsn=self.dsn,
                debug=self.debug,
            )
