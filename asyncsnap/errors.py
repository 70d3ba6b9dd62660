"""Errors a user can act on, each with a one-line message, a hint and an exit code.

Every class says who raises it and when. The CLI prints ``error: <message>`` and
``hint: <hint>`` and exits with ``exit_code``; the library raises them with the original
exception kept as ``__cause__``. Messages never contain a password.

The exit codes are a documented promise (README, "Exit codes"); scripts must treat any
code they do not know as a failure.
"""

from __future__ import annotations


class ExitCode:
    """The process exit codes of the ``asyncsnap`` command (documented in the README)."""

    OK = 0
    FAILED = 1  # the dump started but a database or runtime error stopped it
    USAGE = 2  # bad options or filters; nothing was contacted or written
    CONNECTION = 3  # server unreachable, authentication failed, database missing
    OUTPUT = 4  # output directory not writable, name taken, disk full
    VERIFY = 5  # a backup failed verification (verify, restore)
    LOCKED = 6  # another asyncsnap run holds the output directory's lock, or the target
    DIFFERENT = 7  # compare (restore --compare): the database does not hold the backup's rows
    INTERNAL = 70  # a bug: an unexpected exception (EX_SOFTWARE)
    SIGINT = 130  # interrupted by SIGINT (Ctrl-C)
    SIGTERM = 143  # interrupted by SIGTERM


class AsyncsnapError(Exception):
    """Base class of every error asyncsnap raises on purpose.

    Raised by the library; caught by the CLI, which prints ``message`` and ``hint`` and
    exits with ``exit_code``.
    """

    exit_code: int = ExitCode.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class NotEqual(AsyncsnapError):
    """Raised by the CLI's ``compare`` and by ``restore --compare`` when the database does
    not hold exactly the backup's rows (``asyncsnap.compare.CompareResult.equal`` false)."""

    exit_code = ExitCode.DIFFERENT


class UsageError(AsyncsnapError):
    """Raised before any work starts when arguments are invalid (bad pattern, bad -j)."""

    exit_code = ExitCode.USAGE


class ClientToolMissing(UsageError):
    """Raised by dump when no pg_dump can take the schema of the server (and --no-schema
    was not given), and by restore when no pg_restore can read the backup's schema."""


class NoTablesMatched(UsageError):
    """Raised by dump when the -t/-T/-n/-N filters leave no table to export."""


class ConnectionFailed(AsyncsnapError):
    """Raised when the server cannot be reached (refused, unknown host, timeout)."""

    exit_code = ExitCode.CONNECTION


class AuthenticationFailed(ConnectionFailed):
    """Raised when the server rejects the user or password."""


class DatabaseMissing(ConnectionFailed):
    """Raised when the server answers but the named database does not exist."""


class OutputError(AsyncsnapError):
    """Raised when the backup cannot be written where asked."""

    exit_code = ExitCode.OUTPUT


class OutputExists(OutputError):
    """Raised by dump when ``<DIR>/<NAME>`` or ``<DIR>/<NAME>.partial`` already exists."""


class OutputNotWritable(OutputError):
    """Raised by dump when the output directory cannot be created or written."""


class OutputLocked(OutputError):
    """Raised by dump when another live asyncsnap run holds the output directory's lock."""

    exit_code = ExitCode.LOCKED


class DiskFull(OutputError):
    """Raised by dump when a write fails with ENOSPC or EDQUOT."""


class StoreFailed(OutputError):
    """An object store refused a request, or could not be reached within the retries."""


class DumpFailed(AsyncsnapError):
    """Raised when the server reports an error during a dump (after connecting)."""

    exit_code = ExitCode.FAILED


class PermissionDenied(DumpFailed):
    """Raised when the role may not lock or read a selected table or sequence."""


class LockTimeout(DumpFailed):
    """Raised when ACCESS SHARE on a table is not granted within the lock timeout."""


class SnapshotLost(DumpFailed):
    """Raised when the coordinating connection holding the exported snapshot dies."""


class StatementTimeout(DumpFailed):
    """Raised when the server cancels a dump statement after ``--statement-timeout``."""


class TimeLimitExceeded(DumpFailed):
    """Raised when a dump runs longer than ``--max-duration``; it is cancelled, not kept."""


class DataIntegrityError(DumpFailed):
    """Raised when a file's rows do not match what the server reported (a safety check)."""


class RestoreFailed(AsyncsnapError):
    """Raised by restore when the server rejects the load (after connecting)."""

    exit_code = ExitCode.FAILED


class SchemaMismatch(RestoreFailed):
    """Raised by restore when target tables or columns the backup needs are missing."""


class TargetNotEmpty(RestoreFailed):
    """Raised by restore when a target table has rows and neither --truncate nor --append
    was given."""


class TargetLocked(AsyncsnapError):
    """Raised by restore when another asyncsnap restore holds the target database (or,
    with --create, the name of the database to create): two restores into one database
    would load every row twice. Nothing was changed."""

    exit_code = ExitCode.LOCKED


class VerificationFailed(AsyncsnapError):
    """Raised when a backup's manifest or a data file fails its checks (reader side)."""

    exit_code = ExitCode.VERIFY


class NotARegularFile(VerificationFailed):
    """Raised when a file read as a backup's (a manifest, a data or schema file) is a
    FIFO, a device, a socket or a directory: a FIFO's read waits for a writer forever and
    a device's may never end. asyncsnap writes only regular files."""

    def __init__(self, path: object, what: str) -> None:
        super().__init__(
            f"{path} {what}",
            hint="asyncsnap writes only regular files: this backup was changed after it "
            "was written; restore from another backup",
        )
        self.what = what  # "is a FIFO, not a regular file": for a list of a backup's problems


class Interrupted(AsyncsnapError):
    """Raised by the CLI's signal handling when SIGINT or SIGTERM cancelled the run."""

    exit_code = ExitCode.SIGINT

    def __init__(self, message: str, *, exit_code: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code


def some_names(names: list[str], limit: int = 5, sep: str = ", ") -> str:
    """``a, b, c`` or ``a, b, c, d, e and 7 more``: a list that fits on one error line."""
    shown = sep.join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def most_telling(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception to report from a failed task group.

    Sibling tasks die of cancellation once one fails; the first of our own errors is the
    cause, then any other error, then whatever is left (e.g. the cancellation itself).
    """
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for kind in (AsyncsnapError, Exception):
        for exc in leaves:
            if isinstance(exc, kind):
                return exc
    return leaves[0]


# SQLSTATE 53200, "out of shared memory": in practice the server's lock table is full.
_OUT_OF_SHARED_MEMORY = "53200"


def server_error(exc: BaseException, fewer: str) -> tuple[str, str]:
    """A server error's one-line message and its hint: the server's own message (asyncpg's
    ``str`` appends the HINT and DETAIL lines), and its hint, or for a full lock table one
    that names the setting and ``fewer`` (how to ask for fewer tables at once)."""
    message = getattr(exc, "message", None) or str(exc)
    if getattr(exc, "sqlstate", None) == _OUT_OF_SHARED_MEMORY:
        hint = (
            "the server's lock table is full: raise max_locks_per_transaction "
            f"(a restart), or {fewer}"
        )
    else:
        hint = getattr(exc, "hint", None) or "see the server log"
    return message, hint
