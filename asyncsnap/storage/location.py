"""Where backups live, as the user wrote it: a local directory, or a URL.

A URL is never taken for a path: ``-o s3://backups/nightly`` once wrote a local directory
named ``s3:`` in the working directory and exited 0, and a cron job "backed up to the
bucket" for as long as nobody looked. ``file://`` URLs name local directories; object
store URLs (``s3://``, ``gs://``, ``az://``) name a bucket and prefix
(``objectstore.StoreUrl``) where the commands that take them accept them; any other
scheme is refused with exit 2.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePath
from urllib.parse import unquote, urlsplit

from ..errors import UsageError
from .s3 import StoreUrl, shown

# RFC 3986 scheme, then "://" (a URL as typed).
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# Anything that starts like a URL, a scheme and a colon ("s3:/b/x", which Path() also
# makes of "s3://b/x"; "s3:bucket"): never a path, though it could name one. A local
# directory whose name has a colon is written ./name.
_URL_LIKE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
OBJECT_STORE_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "azure", "abfs", "abfss"})
# abfs/abfss are Azure Data Lake URLs (account in the host): StoreUrl refuses them by name.


def backup_location(value: str | os.PathLike[str], *, role: str) -> Path | StoreUrl:
    """Where backups are: a local path, or an object store's bucket and prefix.

    >>> backup_location("s3://backups/nightly", role="-o")
    StoreUrl(scheme='s3', bucket='backups', prefix='nightly')
    """
    text = os.fspath(value)
    match = _URL.match(text)
    if match is not None and match.group(1).lower() in OBJECT_STORE_SCHEMES:
        return StoreUrl.parse(text)
    return local_path(value, role=role)


def _not_a_url(role: str, text: str, scheme: str) -> UsageError:
    return UsageError(
        f"{role} {shown(text)} starts like a URL ({scheme}:) but is not one: a URL is scheme://...",
        hint="an object store is s3://bucket/prefix (two slashes); a local directory whose "
        "name has a colon is ./name",
    )


def local_path(value: str | os.PathLike[str], *, role: str) -> Path:
    """``value`` as a local path, or a ``UsageError`` when it is a URL. ``role`` says what
    the value is for (``-o``, ``BACKUP``), for the message.

    >>> local_path("backups/x", role="-o")
    PosixPath('backups/x')
    >>> local_path("file:///srv/backups", role="-o")
    PosixPath('/srv/backups')
    """
    text = os.fspath(value)
    like = _URL_LIKE.match(text)
    if like is None:
        return Path(text)
    scheme = like.group(1).lower()
    match = _URL.match(text)
    if match is None:
        if isinstance(value, PurePath) and scheme in OBJECT_STORE_SCHEMES:
            # what Path() makes of s3://b/x: an object store URL given where a path is
            raise UsageError(
                f"{role} {shown(text)} is an object store URL; {role} takes a local file here",
                hint="give a local path",
            )
        raise _not_a_url(role, text, scheme)
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise UsageError(
                f"{role} {shown(text)} names another machine",
                hint="a file:// URL must be local: file:///path or a plain path",
            )
        return Path(unquote(parts.path))
    if scheme in OBJECT_STORE_SCHEMES:
        raise UsageError(
            f"{role} {shown(text)} is an object store URL; {role} takes a local file here",
            hint="give a local path",
        )
    raise UsageError(
        f"{role} {shown(text)} is a {scheme}: URL, not a directory",
        hint="give a local directory (a path), or file:///path",
    )
