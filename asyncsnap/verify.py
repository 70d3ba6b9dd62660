"""Offline verification of a backup: no database needed.

Checks the manifest (format, version, its own checksum, every field and path), that
SHA256SUMS agrees with it, that no unlisted file sits in ``data/``, and for every data
file its presence, stored size, SHA-256 and row count, and that every line is a JSON object
whose keys are the manifest's columns in order. Reports the first bad line of each file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from . import _rows
from . import format as manifest
from .encode.rowcodec import LineNotAsDescribed, LoadShape
from .errors import UsageError, VerificationFailed
from .format import ARCHIVE_MAGIC, DATA_DIR, SCHEMA_DIR, Backup, BackupFile
from .storage.backup import (
    DataFileReader,
    check_schema_file,
    check_stored,
    open_backup,
    plaintext,
)
from .storage.chain import backup_name, open_chain
from .storage.encryption import AGE_MAGIC

# SHA256SUMS has one short line per file; more than this is not ours.
_MAX_SUMS_BYTES = 64 << 20


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a backup; ``line`` counts from 1 within ``file``."""

    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = self.file or "backup"
        if self.line is not None:
            where += f" line {self.line}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class VerifyResult:
    """What ``verify`` found. ``ok`` only when ``problems`` is empty."""

    path: Path | str  # the backup directory, or its URL in a store
    tables: int
    files: int
    rows: int
    bytes: int
    seconds: float
    problems: list[Problem] = field(default_factory=list)
    # False: an encrypted backup checked without its key: every stored byte against its
    # sha256 and size, but no line read (no rows counted)
    content_checked: bool = True
    backups: int = 1  # an increment's chain: every backup of it was checked

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    path: str | Path,
    *,
    on_file: Callable[[str], None] | None = None,
    in_progress: bool = False,
    identities: list[Any] | None = None,
    cluster: str | None = None,
    identity_file: str | Path | None = None,
) -> VerifyResult:
    """Check a backup completely, without a database; an increment with its whole chain
    (every link, then every backup's files: ``storage.chain``).

    Raises ``VerificationFailed`` when the manifest itself cannot be trusted (or a link of
    the chain); returns a result listing problems in the data files otherwise. ``on_file``
    is called before each data file (and may raise to stop); ``in_progress`` lets the dump
    check its own ``.partial`` directory before making it complete.

    ``cluster`` (``asyncsnap.cluster``: a scheduler's address or ``local:N``): the data
    files are checked by the cluster's workers, each reading its files from where the
    backup is (an object store, or a directory they share); the key of an encrypted
    backup reaches them as ``identity_file``, a path each worker reads itself (the key
    never travels in a task).

    >>> verify("backups/backup_20261124T021500Z").ok  # doctest: +SKIP
    True
    """
    started = time.monotonic()
    backup = open_backup(path, in_progress=in_progress, increments=True)
    spread = None
    if cluster is not None:
        from .cluster import ClusterAddress

        if identities and identity_file is None:
            raise UsageError(
                "verify on a cluster takes the key as a file each worker reads",
                hint="give --identity FILE at a path every worker has",
            )
        spread = (
            ClusterAddress.parse(cluster),
            None if identity_file is None else str(identity_file),
        )
    if backup.increment is None or in_progress:
        return verify_backup(
            backup, on_file=on_file, identities=identities, started=started, cluster=spread
        )
    chain = open_chain(path)
    results = [
        verify_backup(b, on_file=on_file, identities=identities, cluster=spread)
        for b in (chain.full, *chain.increments)
    ]
    return VerifyResult(
        path=backup.path,
        tables=results[0].tables,
        files=sum(r.files for r in results),
        rows=sum(r.rows for r in results),
        bytes=sum(r.bytes for r in results),
        seconds=time.monotonic() - started,
        # Each problem named by its backup: the files of a chain's backups share names.
        problems=[
            replace(p, file=f"{backup_name(r.path)}/{p.file or ''}".rstrip("/"))
            for r in results
            for p in r.problems
        ],
        content_checked=all(r.content_checked for r in results),
        backups=len(results),
    )


def verify_backup(
    backup: Backup,
    *,
    on_file: Callable[[str], None] | None = None,
    identities: list[Any] | None = None,
    started: float | None = None,
    cluster: tuple[Any, str | None] | None = None,
) -> VerifyResult:
    """``verify`` for a backup already opened (``open_backup``), or one being written
    (``dump --verify``); ``cluster``: (its address, the key file's path), to check the
    data files there."""
    started = time.monotonic() if started is None else started
    encrypted = bool(backup.encryption)
    readable = not encrypted or bool(identities)
    problems: list[Problem] = []
    problems += _check_sums_file(backup)
    problems += _check_unlisted_files(backup)
    if backup.schema is not None:
        for schema_file in backup.schema.files:
            if on_file is not None:
                on_file(schema_file.path)
            wrong = check_schema_file(backup, schema_file)
            if wrong is None and encrypted and identities and schema_file is backup.schema.sql:
                wrong = _decrypts(backup, schema_file.path, identities)  # the archive: below
            if wrong is not None:
                problems.append(Problem(wrong, schema_file.path))
        wrong = _check_archive(backup, identities if encrypted else None, encrypted)
        if wrong is not None:
            problems.append(Problem(wrong, backup.schema.archive.path))
    rows = size = files = 0
    data = _files_and_columns(backup)
    if cluster is None:
        checked = []
        for columns, entry in data:
            if on_file is not None:
                on_file(entry.path)
            checked.append(_check_file(backup, columns, entry, identities, readable))
    else:
        from .cluster import map_on_cluster

        address, identity_file = cluster
        checked = map_on_cluster(
            address,
            check_file_task,
            [(str(backup.path), e.path, identity_file if readable else None) for _, e in data],
            [e.path for _, e in data],
        )
    for problem, file_rows, file_bytes in checked:
        files += 1
        if problem is not None:
            problems.append(problem)
        rows += file_rows
        size += file_bytes
    return VerifyResult(
        path=backup.path,
        tables=sum(1 for t in backup.tables if t.has_data),
        files=files,
        rows=rows,
        bytes=size,
        seconds=time.monotonic() - started,
        problems=problems,
        content_checked=readable,
    )


def _check_file(
    backup: Backup,
    columns: list[tuple[str, str | None]],
    entry: BackupFile,
    identities: list[Any] | None,
    readable: bool,
) -> tuple[Problem | None, int, int]:
    """One data file: its problem (None: whole), rows and bytes. Without the key of an
    encrypted backup, its stored bytes against the manifest's size and sha256."""
    if not readable:
        return _check_stored(backup, entry), 0, entry.bytes
    encrypted = bool(backup.encryption)
    reader = DataFileReader(backup, entry, identities=identities if encrypted else None)
    problem = _check_lines(reader, LoadShape.checking(columns))
    if problem is None:
        try:
            reader.finish()
        except VerificationFailed as exc:
            problem = Problem(exc.message.removeprefix(entry.path + " "), entry.path)
    else:
        reader.close()
    return problem, reader.rows, reader.raw_bytes


def check_file_task(
    location: str, path: str, identity_file: str | None
) -> tuple[Problem | None, int, int]:
    """On a cluster's worker: ``_check_file`` of the backup at ``location``'s data file
    ``path``, the key read from ``identity_file`` here (None: unencrypted, or checked
    without the key)."""
    from .storage.encryption import load_identities

    backup = open_backup(location, increments=True)
    found = {e.path: (columns, e) for columns, e in _files_and_columns(backup)}
    if path not in found:
        raise VerificationFailed(f"{location}: its manifest no longer lists {path}")
    columns, entry = found[path]
    identities = load_identities(identity_file) if identity_file else None
    readable = not backup.encryption or bool(identities)
    return _check_file(backup, columns, entry, identities, readable)


def _read_through(
    backup: Backup, where: str, identities: list[Any] | None, *, whole: bool
) -> tuple[bytes | None, str | None]:
    """The first block of ``where`` as written (decrypted), reading the rest too when
    ``whole`` (every chunk of an age file is authenticated, not only the first); and what
    is wrong, if it does not decrypt. A missing file (None, None) is not reported here:
    its size and SHA-256 check says it."""
    plain = plaintext(backup, where, identities)
    try:
        head = next(plain, b"")
        if whole:
            for _ in plain:
                pass
    except FileNotFoundError:
        return None, None
    except VerificationFailed as exc:
        return None, exc.message.removeprefix(where + " ")
    finally:
        plain.close()
    return head, None


def _decrypts(backup: Backup, where: str, identities: list[Any]) -> str | None:
    """Whether the encrypted file ``where`` decrypts whole with ``identities``."""
    return _read_through(backup, where, identities, whole=True)[1]


def _check_archive(backup: Backup, identities: list[Any] | None, encrypted: bool) -> str | None:
    """The schema archive starts as pg_dump's custom format does (once decrypted), or, for
    an encrypted backup checked without its key, as an age file does. (A missing archive
    is reported by its size and SHA-256 check.)"""
    assert backup.schema is not None
    where = backup.schema.archive.path
    if encrypted and not identities:
        try:
            with backup.source.open(where) as fh:
                magic = fh.read(len(AGE_MAGIC))
        except FileNotFoundError:
            return None
        return None if magic == AGE_MAGIC else "is not an age file"
    head, wrong = _read_through(backup, where, identities or [], whole=encrypted)
    if head is None:
        return wrong
    if head[: len(ARCHIVE_MAGIC)] != ARCHIVE_MAGIC:
        return "is not a pg_dump custom-format archive"
    return None


def _check_stored(backup: Backup, entry: BackupFile) -> Problem | None:
    """Without the key: the stored bytes against the manifest's size and sha256."""
    wrong = check_stored(backup.source, entry.path, entry.stored_bytes, entry.sha256)
    return None if wrong is None else Problem(wrong, entry.path)


def _check_lines(reader: DataFileReader, shape: LoadShape) -> Problem | None:
    """The first line of the file that is not a JSON object with exactly the manifest's
    keys in order, each value of its column's encoding (what restore will take), or a
    problem the reader found (damage, truncation). The native converter checks each
    block; a block it refuses is parsed again here to say what is wrong in JSON terms."""
    line_no = 0
    try:
        for block in reader:
            try:
                shape.encode(block, line_no + 1)
            except LineNotAsDescribed as exc:
                found = _explain(block, list(shape.columns), line_no, reader.entry.path)
                return found or Problem(
                    f"column {exc.column!r}: {exc.what}" if exc.column else exc.what,
                    reader.entry.path,
                    exc.line,
                )
            line_no += _rows.count_lines(block)
            del block
    except VerificationFailed as exc:
        return Problem(exc.message.removeprefix(reader.entry.path + " "), reader.entry.path)
    return None


def _explain(
    block: bytes | bytearray, expected: list[str], line_no: int, path: str
) -> Problem | None:
    """The first line of ``block`` that is not valid JSON, not an object, or whose keys
    are not ``expected``, in words."""
    for line in block.splitlines():
        line_no += 1
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return Problem(f"is not valid JSON: {exc}", path, line_no)
        if not isinstance(value, dict):
            return Problem("is not a JSON object", path, line_no)
        if list(value) != expected:
            return Problem(
                f"has keys {list(value)!r}, the manifest's columns are {expected!r}",
                path,
                line_no,
            )
    return None


def _files_and_columns(
    backup: Backup,
) -> list[tuple[list[tuple[str, str | None]], BackupFile]]:
    """Every data file with the keys of its lines and their encodings (none for the large
    objects' file: any JSON value)."""
    by_path: dict[str, list[tuple[str, str | None]]] = (
        {}  # an increment's lines are changes: their keys are the format's (any JSON)
        if backup.increment is not None
        else {
            f.path: [(c.name, c.encoding) for c in t.columns]
            for t in backup.tables
            for f in t.files
        }
    )
    found: list[tuple[list[tuple[str, str | None]], BackupFile]] = []
    for keys, entry in backup.data_files():
        found.append((by_path.get(entry.path) or [(k, None) for k in keys], entry))
    return found


def _check_sums_file(backup: Backup) -> list[Problem]:
    listed = {f.path: f.sha256 for _, f in backup.data_files()}
    if backup.schema is not None:
        listed.update({f.path: f.sha256 for f in backup.schema.files})
    try:
        with backup.source.open(manifest.SUMS_NAME) as fh:
            text = fh.read(_MAX_SUMS_BYTES).decode()
    except FileNotFoundError:
        return [Problem(f"{manifest.SUMS_NAME} is missing")]
    except UnicodeDecodeError:
        return [Problem(f"{manifest.SUMS_NAME} is not text")]
    sums = {}
    for line in text.splitlines():
        digest, sep, relpath = line.partition("  ")
        if not sep:
            return [Problem(f"{manifest.SUMS_NAME} has a malformed line {line!r}")]
        sums[relpath] = digest
    if sums != listed:
        return [Problem(f"{manifest.SUMS_NAME} does not agree with the manifest")]
    return []


def _check_unlisted_files(backup: Backup) -> list[Problem]:
    listed = {f.path for _, f in backup.data_files()}
    if backup.schema is not None:
        listed.update(f.path for f in backup.schema.files)
    source = backup.source
    if source.names(DATA_DIR) is None and any(p.startswith(DATA_DIR + "/") for p in listed):
        return [Problem(f"{DATA_DIR}/ is missing")]
    problems = []
    for directory in (DATA_DIR, SCHEMA_DIR):
        problems += [
            Problem("is not listed in the manifest", f"{directory}/{name}")
            for name in source.names(directory) or []
            if f"{directory}/{name}" not in listed
        ]
    return problems
