"""Files of this machine opened for reading only when they are regular files.

A backup directory is read as possibly hostile: one of its names can be a FIFO (whose
``open`` waits for a writer that never comes, and a command hangs with no word), a device
(``/dev/zero`` never ends) or a directory. ``open_regular`` looks at what the name is
before reading it, and opens without waiting (``O_NONBLOCK``: a FIFO's open returns at
once) so that what the name is can be checked on the open file itself, not only on a
name that may be swapped between the look and the open.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from .errors import NotARegularFile

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words, when it is not a regular file."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def refused(path: str | Path, mode: int) -> NotARegularFile:
    return NotARegularFile(path, f"is {kind(mode)}, not a regular file")


def open_regular(path: str | Path) -> io.BufferedReader:
    """``path`` opened for reading, if it is a regular file (symbolic links followed).

    :raises FileNotFoundError: nothing has that name.
    :raises NotARegularFile: it is a FIFO, a device, a socket or a directory.
    """
    mode = os.stat(path).st_mode  # a socket cannot even be opened: look first
    if not stat.S_ISREG(mode):
        raise refused(path, mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode  # the file opened, which a rename may have swapped
        if not stat.S_ISREG(mode):
            raise refused(path, mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return open(fd, "rb", closefd=True)


def read_regular(path: str | Path) -> bytes:
    """The bytes of ``path``, if it is a regular file (``open_regular``'s errors)."""
    with open_regular(path) as fh:
        return fh.read()
