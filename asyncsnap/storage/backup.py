"""Reading a backup: ``open_backup`` checks the manifest (``manifest.load`` and
``manifest.parse``, in the order docs/format.md prescribes) before anything is opened or
sent to a server; ``DataFileReader`` then streams one data file, hashing the stored bytes
and counting lines, and ``finish`` compares both with the manifest.

The manifest's typed entries are defined in ``manifest`` and re-exported here.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import threading
import zlib
from collections.abc import Generator
from pathlib import Path
from typing import Any

import zstandard

from .. import _rows
from .. import format as manifest
from ..errors import NotARegularFile, UsageError, VerificationFailed
from ..format import (
    MANIFEST_NAME,
    PARTIAL_SUFFIX,
    Backup,
    BackupFile,
    Compression,
    FileSource,
    SchemaFile,
)
from .encryption import Decryption, decrypted
from .location import backup_location
from .s3 import S3Store
from .store import LocalStore, ObjectMissing, Store, open_object

_READ_BLOCK = 1 << 20


class StoreSource:
    """The files of the backup at ``<store root>/<name>`` (``format.FileSource``): the one
    way every command reads a backup, wherever its store is. Paths are the manifest's."""

    def __init__(self, store: Store, name: str = "") -> None:
        self.store = store
        self.name = name
        self.where = f"{store.where}/{name}" if name else store.where
        self._listing: dict[str, list[str]] | None = None

    def _key(self, relpath: str) -> str:
        return f"{self.name}/{relpath}" if self.name else relpath

    def open(self, relpath: str) -> io.BufferedIOBase:
        try:
            return open_object(self.store, self._key(relpath))
        except ObjectMissing as exc:
            raise FileNotFoundError(relpath) from exc

    def names(self, directory: str) -> list[str] | None:
        if self._listing is None:
            listing: dict[str, list[str]] = {}
            for stored in self.store.objects(self.name):
                relpath = stored.key.removeprefix(self.name + "/") if self.name else stored.key
                folder, _, rest = relpath.rpartition("/")
                listing.setdefault(folder, []).append(rest)
            self._listing = listing
        found = self._listing.get(directory)
        return None if found is None else sorted(found)

    def local_file(self, relpath: str) -> Path | None:
        return self.store.local_path(self._key(relpath))


class LocalSource(StoreSource):
    """A backup directory on this machine (a ``StoreSource`` over a ``LocalStore``)."""

    def __init__(self, root: Path) -> None:
        super().__init__(LocalStore(root))
        self.root = root


def open_backup(path: str | Path, *, in_progress: bool = False, increments: bool = False) -> Backup:
    """Open a backup (a directory, or ``s3://bucket/prefix/NAME``) and check its manifest
    (not yet the data files).

    ``in_progress`` is for the dump checking its own ``.partial`` directory before the
    rename (``dump --verify``); everyone else refuses a ``.partial``. ``increments``: an
    incremental backup is accepted (verify, inspect, ``dump --since``); every other reader
    reads full backups and refuses one.

    :raises VerificationFailed: for anything in the manifest a reader must not trust.

    >>> backup = open_backup("backups/backup_20261124T021500Z")  # doctest: +SKIP
    """
    root = backup_location(path, role="BACKUP")
    if not isinstance(root, Path):
        return open_stored_backup(S3Store(root), increments=increments)
    if root.name.endswith(PARTIAL_SUFFIX) and not in_progress:
        raise VerificationFailed(
            f"{root} is an incomplete backup (a dump that failed, was interrupted or is "
            "still running)",
            hint="use a backup directory without the .partial suffix",
        )
    if not root.is_dir():
        raise VerificationFailed(f"{root} is not a directory", hint="give a backup directory")
    opened = manifest.parse(root, manifest.load(root, streamed=True), LocalSource(root))
    return opened if increments else refuse_increment(opened)


def refuse_increment(backup: Backup) -> Backup:
    """``backup``, if it is a full backup: an increment holds changes, not rows."""
    if backup.increment is not None:
        raise VerificationFailed(
            f"{backup.path} is an incremental backup (the changes after "
            f"{backup.increment.parent}): this command reads full backups",
            hint="give its full backup (the first of its chain, made with dump --slot); "
            "verify and inspect read increments",
        )
    return backup


def open_stored_backup(store: Store, name: str = "", *, increments: bool = False) -> Backup:
    """The backup at ``name`` in ``store`` (its root when empty), its manifest checked;
    an increment only with ``increments`` (``open_backup``)."""
    source = StoreSource(store, name)
    try:
        body = read_manifest(store, f"{name}/{MANIFEST_NAME}" if name else MANIFEST_NAME)
    except ObjectMissing as exc:
        inside = sorted(
            o.key.removesuffix("/" + MANIFEST_NAME)
            for o in store.objects(name)
            if o.key.endswith("/" + MANIFEST_NAME)
            and o.key.count("/") == (name.count("/") + 2 if name else 1)
        )
        example = f"{source.where}/{inside[-1].rpartition('/')[2]}" if inside else None
        raise manifest.no_manifest(source.where, example) from exc
    opened = manifest.parse(source.where, body, source)
    return opened if increments else refuse_increment(opened)


def read_manifest(store: Store, key: str) -> dict[str, Any]:
    """The manifest at ``key``, read and checked as ``manifest.load`` checks a local one
    (``ObjectMissing`` if there is none); its tables streamed, for ``manifest.parse``."""
    raw = b"".join(store.open_read(key))
    return manifest.load_bytes(raw, f"{store.where}/{key}", streamed=True)


def plaintext(
    backup: Backup, relpath: str, identities: list[Any] | None = None
) -> Generator[bytes, None, None]:
    """The bytes of a file of ``backup`` as written before encryption, in chunks: the one
    place a file other than a data file (``DataFileReader``) is decrypted. ``identities``
    default to the backup's own (``--identity``); ``FileNotFoundError`` if it is missing,
    ``VerificationFailed`` if it does not decrypt.

    It checks no size or SHA-256: callers check those first (``check_schema_file``)."""
    with backup.source.open(relpath) as fh:
        if not backup.encryption:
            while block := fh.read(_READ_BLOCK):
                yield block
            return
        keys = list(backup.identities) if identities is None else identities
        yield from decrypted(fh, keys, where=relpath)


def check_schema_file(backup: Backup, entry: SchemaFile) -> str | None:
    """What is wrong with a schema file (missing, size, SHA-256), or None."""
    return check_stored(backup.source, entry.path, entry.bytes, entry.sha256)


def check_stored(source: FileSource, relpath: str, size: int, sha256: str) -> str | None:
    """What is wrong with a file as stored against the manifest's size and SHA-256 (it is
    missing, cut, grown or changed), or None. Reads it whole, without decoding it."""
    digest = hashlib.sha256()
    found = 0
    try:
        with source.open(relpath) as fh:
            while block := fh.read(_READ_BLOCK):
                digest.update(block)
                found += len(block)
    except FileNotFoundError:
        return "is missing"
    except NotARegularFile as exc:
        return exc.what
    if found != size:
        return f"has {found} bytes, the manifest says {size}"
    if digest.hexdigest() != sha256:
        return "does not match its SHA-256 in the manifest"
    return None


class _HashingReader(io.RawIOBase):
    """A raw file that hashes and counts every byte read through it."""

    def __init__(self, fh: io.BufferedIOBase) -> None:
        self._fh = fh
        self.hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._fh.readinto(buffer)
        if n:
            self.hash.update(memoryview(buffer)[:n])
            self.count += n
        return n or 0


def _decompressing(kind: Compression, raw: io.RawIOBase) -> Any:
    """A stream of decompressed bytes whose read(n) returns at most n bytes: memory stays
    bounded however well the data compressed."""
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(
            raw,  # type: ignore[arg-type]  # any object with read() will do
            read_size=_READ_BLOCK,
        )
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    return io.BufferedReader(raw, _READ_BLOCK)


class DataFileReader:
    """Streams one data file's NDJSON in blocks of whole lines, checking it as it goes.

    A block holds about ``block_size`` bytes of whole lines, or one line when a line is
    longer (up to ``MAX_LINE_BYTES``); memory is one block plus one read.

    Iterate for blocks (each ends with a newline); then call ``finish`` to compare the
    SHA-256, stored size and line count with the manifest. A reader that stops early
    (say, the server rejected a block) can call ``drain`` to hash the rest, so that a
    damaged file is reported as damaged rather than as the server's parse error.
    """

    def __init__(
        self,
        backup: Backup,
        entry: BackupFile,
        *,
        block_size: int = 4 << 20,
        max_line: int | None = None,
        identities: list[Any] | None = None,
        count_rows: bool = True,
    ) -> None:
        """``identities``: age secret keys, for a file written encrypted (it is hashed
        as stored, then decrypted, then decompressed). ``count_rows`` False: the caller
        counts the lines of each block into ``rows`` itself (it splits them anyway), so
        they are not counted twice; ``finish`` checks ``rows`` all the same."""
        self.count_rows = count_rows
        self.backup = backup
        # Whether to decrypt is the manifest's to say, never the caller's: a key given
        # for a plain backup is not used (it made an intact file "not decrypt").
        self.identities = (
            (identities or list(backup.identities) or None) if backup.encryption else None
        )
        self.entry = entry
        self.block_size = block_size
        self.max_line = entry.line_limit if max_line is None else max_line
        self.rows = 0
        self.raw_bytes = 0
        self._fh: io.BufferedIOBase | None = None
        self._raw: _HashingReader | None = None
        self._stream: Any = None  # the decompressed stream while iterating
        self._pending = bytearray()  # the start of a line whose end was not read yet
        self._done = False
        self._plain: Decryption | None = None  # decryption, if any
        # Held while a block is read: ``close`` from another thread (a cancelled restore's
        # clean-up while a worker thread reads ahead) waits for that read to end instead
        # of pulling the file and the decryption from under it.
        self._busy = threading.RLock()

    def _fail(self, what: str) -> VerificationFailed:
        return VerificationFailed(
            f"{self.entry.path} {what}",
            hint="the backup is damaged; nothing from this file was kept",
        )

    def __iter__(self) -> DataFileReader:
        try:
            self._fh = self.backup.source.open(self.entry.path)  # closed in finish/close
        except FileNotFoundError as exc:
            raise self._fail("is missing") from exc
        except NotARegularFile as exc:
            raise self._fail(exc.what) from exc
        self._raw = _HashingReader(self._fh)
        plain: io.RawIOBase = self._raw
        if self.backup.encryption:
            if not self.identities:
                raise UsageError(
                    f"{self.entry.path} is encrypted and no key was given",
                    hint="give the matching secret key file with --identity",
                )
            source = io.BufferedReader(self._raw, _READ_BLOCK)
            self._plain = Decryption(source, self.identities, where=self.entry.path)
            plain = self._plain
        self._stream = _decompressing(self.backup.compression, plain)
        return self

    def __next__(self) -> bytes | bytearray:
        """The next block of whole lines. A method, not a generator: no frame keeps the
        block alive once the caller lets go of it, which matters for a line of 1 GB."""
        with self._busy:
            return self._next_block()

    def _next_block(self) -> bytes | bytearray:
        if self._stream is None:
            raise StopIteration
        while True:
            try:
                data = self._stream.read(self.block_size)
            except (zstandard.ZstdError, zlib.error, OSError, EOFError) as exc:
                raise self._fail(f"cannot be decompressed: {exc}") from exc
            except VerificationFailed as exc:
                # A chunk that does not decrypt: with a wrong key, or in a file that was
                # changed. The stored bytes tell which; a changed file is called damaged,
                # as a plain one is, not a question of the key.
                self.drain()
                if self.damaged():
                    raise self._fail("does not match its SHA-256 in the manifest") from exc
                raise
            if not data:
                self._stream = None
                if self._pending:
                    raise self._fail("does not end with a newline (truncated?)")
                self.drain()  # bytes after the compressed stream still count for the hash
                self._done = True
                raise StopIteration
            cut = data.rfind(b"\n") + 1
            if not cut:
                # The middle of a long line: it grows in place (amortised), so a line of
                # hundreds of MB is held once, not once per read plus a joined copy.
                self._pending += data
                if len(self._pending) > self.max_line:
                    raise self._fail(
                        f"has a line longer than {self.max_line} bytes, more than any row can be"
                    )
                continue
            block: bytes | bytearray
            if self._pending:
                self._pending += memoryview(data)[:cut]
                block, self._pending = self._pending, bytearray()
            else:
                block = data[:cut] if cut < len(data) else data
            if cut < len(data):
                self._pending += memoryview(data)[cut:]
            del data
            if self.count_rows:
                self.rows += _rows.count_lines(block)
            self.raw_bytes += len(block)
            return block

    def _stop_decrypting(self) -> None:
        """End the decryption thread before anyone else reads the file."""
        if self._plain is not None:
            self._plain.stop()
            self._plain = None

    def drain(self) -> None:
        """Hash whatever was not read yet (after an early stop)."""
        with self._busy:
            self._stop_decrypting()
            if self._raw is None:
                return
            buffer = bytearray(_READ_BLOCK)
            while self._raw.readinto(buffer):
                pass

    def damaged(self) -> bool:
        """After ``drain``: whether the stored bytes differ from the manifest's."""
        stored, digest = self._stored()
        return stored != self.entry.stored_bytes or digest != self.entry.sha256

    def _stored(self) -> tuple[int, str]:
        if self._raw is None:
            return 0, hashlib.sha256().hexdigest()
        return self._raw.count, self._raw.hash.hexdigest()

    def finish(self) -> None:
        """Raise ``VerificationFailed`` unless the whole file matched the manifest."""
        self.close()
        stored, digest = self._stored()
        if not self._done:
            raise self._fail("was not read to the end")
        if stored != self.entry.stored_bytes:
            raise self._fail(f"has {stored} bytes, the manifest says {self.entry.stored_bytes}")
        if digest != self.entry.sha256:
            raise self._fail("does not match its SHA-256 in the manifest")
        if self.rows != self.entry.rows:
            raise self._fail(f"has {self.rows} rows, the manifest says {self.entry.rows}")

    def close(self) -> None:
        with self._busy:
            self._stop_decrypting()
            self._stream = None
            if self._fh is not None:
                self._fh.close()
                self._fh = None
