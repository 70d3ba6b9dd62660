"""Passwords the CLI must never print: found in connection strings, the command line and
the environment, and removed from every message, summary and process title."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import AsyncsnapError

if TYPE_CHECKING:
    from ..connection import ConnectionSpec

# What a command connects with, as far as it is known: the DSN argument as typed before
# the options are checked, the checked spec after; None for commands that do not connect.
# (A string: connection.py imports asyncpg, which the start of every command, --help and
# completion included, would pay for.)
Connection: TypeAlias = "str | ConnectionSpec | None"


def passwords_in(text: str) -> list[str]:
    """The passwords a connection string holds, as written and decoded: a URI's
    ``user:PASSWORD@`` and ``?password=``, a key/value string's ``password=``. Also for a
    command-line word that carries one (``--dbname=...``, ``-d...``).

    >>> passwords_in("--dbname=postgresql://u:p%40ss@h/d?password=other")
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
    return [s for arg in argv[1:] for s in passwords_in(arg) if s]


def _secrets(dsn: Connection) -> list[str]:
    from ..connection import ConnectionSpec, resolve

    text = dsn.dsn if isinstance(dsn, ConnectionSpec) else dsn
    candidates = [c for c in (text, os.environ.get("DATABASE_URL")) if c]
    found = [s for candidate in candidates for s in passwords_in(candidate)]
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
