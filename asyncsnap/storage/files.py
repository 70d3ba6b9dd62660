"""Files on disk: the backup directory, atomic writes, compression and hashing.

Write order (docs/format.md): every data file is written under a temporary name, fsynced
and renamed; then SHA256SUMS; then manifest.json; the directory is built as
``<NAME>.partial`` and renamed to ``<NAME>`` only after the manifest is in. Files are
created 0600 and directories 0700: backups hold whatever the database holds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import zstandard

from .. import _rows
from ..errors import (
    OutputError,
    OutputExists,
    OutputLocked,
    OutputNotWritable,
    UsageError,
)
from ..fingerprint import RowFingerprint
from ..format import (
    DATA_DIR,
    EXTENSIONS,
    MANIFEST_NAME,
    PARTIAL_SUFFIX,
    SCHEMA_DIR,
    SUMS_NAME,
    Backup,
    Compression,
    Manifest,
    SchemaFile,
    write_manifest,
)
from ..scratch import PrivateScratch
from .encryption import EncryptingStage, encrypt_whole
from .store import LocalFileSink, LocalStore, Sink, Store, fsync_dir, write_file_streamed
from .store import output_error as _output_error

# zstd level 1, one thread. Level 3 measured free with one stream at design time; with -j 2 on
# 2 cores the client competes with two server backends, and level 1 measured 35-80% faster
# (696 vs 386 MiB/s on the mixed table's JSON, which it also compresses better: 5.7x vs
# 5.2x; pgbench's 5% larger), cutting client CPU by a quarter and the dump's wall time by
# ~5%. zstd's own worker threads would compete with the server for the cores.
_ZSTD_LEVEL = 1
_GZIP_LEVEL = 6
# Bytes handed to write() at once; bounds memory per open file.
WRITE_BUFFER = 1 << 20


class _Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes, /) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def _zstd() -> zstandard.ZstdCompressor:
    # write_content_size is impossible when streaming; the checksum lets `zstd -t` and
    # `zstd -dc` detect corruption on their own.
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True)


# wbits=31: gzip framing, mtime 0 and no file name, so output is reproducible.
_GZIP_WBITS = 31


def _compressor(kind: Compression) -> _Compressor:
    if kind == "zstd":
        compressor: _Compressor = _zstd().compressobj()
        return compressor
    if kind == "gzip":
        return zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    return _Identity()


# A file whose NDJSON stays under this many bytes is compressed in one call at its end,
# by a compressor its thread keeps, not by a streaming context of its own: making a zstd
# context per file (about a MiB of tables set up and dropped) was a tenth of the client
# CPU of a dump of 3,000 small tables (perf). The frame holds its content size; readers
# take both.
SMALL_FILE = 64 << 10
_thread_compressors = threading.local()


def _compressed_whole(kind: Compression, data: bytes) -> bytes:
    """``data`` compressed as one frame (one gzip member), with ``_compressor``'s
    settings."""
    if kind == "zstd":
        compressor = getattr(_thread_compressors, "zstd", None)
        if compressor is None:
            compressor = _thread_compressors.zstd = _zstd()
        out: bytes = compressor.compress(data)
        return out
    if kind == "gzip":
        return zlib.compress(data, _GZIP_LEVEL, _GZIP_WBITS)
    return data


@dataclass(frozen=True, slots=True)
class StoredFile:
    """What was written for one data file; becomes the file's manifest entry."""

    path: str  # relative to the backup directory, with '/' separators
    rows: int
    bytes: int  # uncompressed NDJSON bytes
    stored_bytes: int  # bytes on disk
    sha256: str  # of the file as stored
    seconds: float = 0.0  # time spent producing it
    started: float = 0.0  # time.monotonic() when producing it began (a table's wall time)
    objects: int = 0  # large-object file only: objects in it
    object_bytes: int = 0  # large-object file only: their bytes
    longest_line: int = 0  # the longest line written column by column (``bigrows``), if any
    fingerprint: str | None = None  # of the lines written (``asyncsnap.fingerprint``)
    # What the store says of the file just after it was written (``cluster.file_stamp``):
    # a cluster's coordinator checks it again, so that a run of the same task the
    # scheduler had given up on cannot have replaced it unseen. Not in the manifest.
    stamp: str | None = None


class DataFileWriter:
    """Streams bytes into one data file: counts rows, compresses, hashes, hands the stored
    bytes to a ``Sink`` (by default a local file under ``root``).

    Not thread-safe; one writer per chunk. ``finish`` makes the file durable under its
    final name; ``discard`` removes what was written. Memory is bounded by the write
    buffer, whatever the file's size.
    """

    def __init__(
        self,
        root: Path | None,
        relpath: str,
        compression: Compression,
        sink: Sink | None = None,
        recipients: list[Any] | None = None,
    ) -> None:
        """``root``: the local directory the file goes in; None with a ``sink`` of its own."""
        self.relpath = relpath
        if sink is None:
            assert root is not None
            sink = LocalFileSink(root / relpath)
        self.sink: Sink = sink
        self.compression = compression
        # None while the file is small: its NDJSON is kept (``_small``) and compressed
        # whole by ``close_data``; made when the file outgrows ``SMALL_FILE``.
        self._compressor: _Compressor | None = None
        self._small: list[bytes] = []
        self._small_size = 0
        self._stored = _Hashing(self.sink)
        # With recipients, the compressed stream is encrypted (age) before it is hashed
        # and stored: the manifest's sha256 is of the stored bytes, checkable without the key.
        self._encryption: EncryptingStage | None = None
        if recipients:
            self._encryption = EncryptingStage(self._stored, recipients)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.rows = 0
        self.raw_bytes = 0
        self.last_byte = b"\n"
        # None: not asked for (``dump --fingerprints``; compare's writers always are)
        self.fingerprint: RowFingerprint | None = RowFingerprint()

    @property
    def stored_bytes(self) -> int:
        return self._stored.size

    @property
    def temp_path(self) -> Path:
        """The local file's temporary name (local sinks only)."""
        assert isinstance(self.sink, LocalFileSink)
        return self.sink.temp_path

    @property
    def final_path(self) -> Path:
        """The local file's final name (local sinks only)."""
        assert isinstance(self.sink, LocalFileSink)
        return self.sink.final_path

    def write(self, data: bytes, lines: int | None = None) -> None:
        """Add NDJSON bytes (any split: lines may cross calls); ``lines``, when the caller
        knows how many newlines ``data`` holds (counting costs a pass holding the GIL)."""
        self.rows += _rows.count_lines(data) if lines is None else lines
        self.raw_bytes += len(data)
        if data:
            self.last_byte = data[-1:]
        if self.fingerprint is not None:
            self.fingerprint.update(data)
        if self._compressor is None:
            if self._small_size + len(data) <= SMALL_FILE:
                self._small.append(bytes(data))
                self._small_size += len(data)
                return
            self._compressor = _compressor(self.compression)
            for kept in self._small:
                self._stage(self._compressor.compress(kept))
            self._small.clear()
        self._stage(self._compressor.compress(data))

    def _stage(self, out: bytes) -> None:
        if not out:
            return
        self._pending.append(out)
        self._pending_size += len(out)
        if self._pending_size >= WRITE_BUFFER:
            self._flush_pending()

    def _flush_pending(self) -> None:
        if not self._pending:
            return
        block = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        if self._encryption is not None:
            self._encryption.write(block)
        else:
            self._stored.write(block)

    def close_data(self) -> None:
        """Flush the compressor and write everything; call before ``finish``."""
        if self._compressor is None:
            self._stage(_compressed_whole(self.compression, b"".join(self._small)))
            self._small.clear()
        else:
            self._stage(self._compressor.flush())
        self._flush_pending()

    def finish(self) -> StoredFile:
        """Make the file durable under its final name (blocking: run it in a worker
        thread) and say what was written."""
        if self._encryption is not None:
            self._encryption.close()
        self.sink.finish()
        return StoredFile(
            path=self.relpath,
            rows=self.rows,
            bytes=self.raw_bytes,
            stored_bytes=self._stored.size,
            sha256=self._stored.hash.hexdigest(),
            fingerprint=None if self.fingerprint is None else self.fingerprint.hexdigest(),
        )

    def discard(self) -> None:
        """Delete whatever was written. Safe to call more than once."""
        if self._encryption is not None:
            self._encryption.abort()
        self.sink.discard()


class _NoSink:
    """A sink that keeps nothing (``CountingWriter``)."""

    where = "(nowhere)"

    def write(self, block: bytes) -> None:
        pass

    def finish(self) -> None:
        pass

    def discard(self) -> None:
        pass


class CountingWriter(DataFileWriter):
    """Counts and fingerprints lines and keeps nothing: what ``compare`` makes of a live
    table's rows, encoded exactly as a dump writes them."""

    def __init__(self, relpath: str) -> None:
        super().__init__(None, relpath, "none", sink=_NoSink())
        self._compressor = _Identity()  # nothing is kept, so nothing waits for the end

    def _stage(self, out: bytes) -> None:
        pass  # neither stored nor hashed as stored

    def finish(self) -> StoredFile:
        return StoredFile(
            path=self.relpath,
            rows=self.rows,
            bytes=self.raw_bytes,
            stored_bytes=0,
            sha256="",
            fingerprint=self.fingerprint.hexdigest() if self.fingerprint is not None else None,
        )


def store_writer(
    store: Store, key: str, relpath: str, compression: Compression, recipients: list[Any] | None
) -> DataFileWriter:
    """A data file streamed to ``key`` in ``store``: compressed, encrypted, hashed and
    counted here, the same for every store (``relpath`` is its manifest path)."""
    return DataFileWriter(None, relpath, compression, sink=store.sink(key), recipients=recipients)


class DataTarget(Protocol):
    """Where the copy's data files go: a backup, or ``compare``'s counting."""

    def data_writer(self, stem: str, compression: Compression) -> DataFileWriter: ...

    @property
    def cheap_writers(self) -> bool:
        """Whether ``data_writer`` does no I/O and starts no thread, and a writer's
        ``write`` touches its sink only past ``WRITE_BUFFER``: then the event loop makes a
        chunk's writer and converts a small chunk itself, and the chunk's one hop to a
        thread is its seal (a local, unencrypted file; a count)."""
        ...


class _Hashing:
    """The last stage before the sink: the stored bytes' sha256 and size."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, block: bytes) -> None:
        self.hash.update(block)
        self.size += len(block)
        self._sink.write(block)


def write_content_file(target: BackupTarget, relpath: str, content: bytes) -> SchemaFile:
    """Write a small file of the database's own content (the schema archive and its SQL:
    function bodies, comments), encrypted when the backup is, as data files are; its
    manifest entry (size and SHA-256 of the bytes as stored)."""
    if target.recipients:
        content = encrypt_whole(content, target.recipients)
    target.write_small_file(relpath, content)
    return SchemaFile(path=relpath, bytes=len(content), sha256=hashlib.sha256(content).hexdigest())


class BackupTarget(Protocol):
    """A backup being written: a local directory (``BackupDirectory``) or a prefix in an
    object store (``bucket.BackupPrefix``). The dump writes data files, the schema files
    and SHA256SUMS, then the manifest, then commits; after a failure it abandons."""

    path: Any  # where it is being written, for messages (a path or a URL)
    recipients: list[Any] | None  # age recipients: every file is encrypted to them

    def data_writer(self, stem: str, compression: Compression) -> DataFileWriter: ...
    @property
    def cheap_writers(self) -> bool:
        """As ``DataTarget.cheap_writers``."""
        ...

    def write_small_file(self, relpath: str, content: bytes) -> None: ...
    def write_manifest(self, written: Manifest) -> None:
        """Write ``manifest.json`` (``format.write_manifest``): the last file a dump
        writes before its commit."""
        ...

    def sync_data(self) -> None:
        """Make every data file written so far durable: before SHA256SUMS and the
        manifest name them."""
        ...

    def scratch_directory(self) -> Path:
        """A private local directory for pg_dump's archive before it is stored."""
        ...

    def written(self) -> Backup:
        """The backup as written, manifest included, before ``commit`` (``--verify``)."""
        ...

    def commit(self) -> Path | str:
        """Make the backup complete; its final location."""
        ...

    def abandon(self, keep_partial: bool) -> str | None:
        """After a failure: remove what was written, or with ``keep_partial`` keep it
        without a manifest; where it was kept, if it was."""
        ...


class BackupDirectory:
    """A backup being built: ``<parent>/<name>.partial`` until ``commit`` renames it."""

    def __init__(self, parent: Path, name: str, recipients: list[Any] | None = None) -> None:
        self.parent = parent
        self.name = name
        self.recipients = recipients  # age recipients: every file is encrypted to them
        self.final_path = parent / name
        self.path = parent / (name + PARTIAL_SUFFIX)
        # Every file is written through it; data files are fsynced together (sync_data).
        self.store = LocalStore(self.path, deferred_sync=True)
        self._scratch = PrivateScratch()  # used when encrypting: outside the backup

    @classmethod
    def is_free(cls, parent: Path, name: str) -> bool:
        """Whether neither ``name`` nor its ``.partial`` is in ``parent``."""
        backup = cls(parent, name)
        return not any(p.exists() or p.is_symlink() for p in (backup.final_path, backup.path))

    @classmethod
    def check_free(cls, parent: Path, name: str) -> None:
        """Raise unless ``name`` is valid and neither it nor its ``.partial`` exists."""
        validate_backup_name(name)
        backup = cls(parent, name)
        for taken in (backup.final_path, backup.path):
            if taken.exists() or taken.is_symlink():
                raise OutputExists(
                    f"{taken} already exists",
                    hint="choose another --name or -o directory, or remove the old one",
                )

    @staticmethod
    def prepare_parent(parent: Path) -> None:
        """Create the output directory (and its parents) if missing, mode 0700."""
        if parent.exists() and not parent.is_dir():
            raise OutputNotWritable(f"{parent} is not a directory", hint="-o takes a directory")
        try:
            parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise _output_error(exc, parent) from exc

    @classmethod
    def create(
        cls, parent: Path, name: str, recipients: list[Any] | None = None
    ) -> BackupDirectory:
        """Create ``<parent>/<name>.partial`` (and ``parent`` if missing), mode 0700."""
        cls.check_free(parent, name)
        backup = cls(parent, name, recipients)
        cls.prepare_parent(parent)
        try:
            os.mkdir(backup.path, 0o700)
            os.chmod(backup.path, 0o700)  # mkdir's mode is filtered by the umask
            os.mkdir(backup.path / DATA_DIR, 0o700)
            os.chmod(backup.path / DATA_DIR, 0o700)
        except FileExistsError as exc:
            raise OutputExists(
                f"{backup.path} already exists",
                hint="another dump may be writing there; choose another --name",
            ) from exc
        except NotADirectoryError as exc:
            raise OutputNotWritable(
                f"{parent} is not a directory", hint="-o takes a directory"
            ) from exc
        except OSError as exc:
            raise _output_error(exc, parent) from exc
        return backup

    @property
    def cheap_writers(self) -> bool:
        return not self.recipients  # an encrypted file starts age's thread

    def data_writer(self, stem: str, compression: Compression) -> DataFileWriter:
        relpath = f"{DATA_DIR}/{stem}{EXTENSIONS[compression]}"
        return store_writer(self.store, relpath, relpath, compression, self.recipients)

    def write_small_file(self, relpath: str, content: bytes) -> None:
        self.store.put(relpath, content)

    def write_manifest(self, written: Manifest) -> None:
        write_file_streamed(self.path, MANIFEST_NAME, lambda write: write_manifest(written, write))

    def sync_data(self) -> None:
        self.store.sync()

    def commit(self) -> Path:
        """Make the backup visible under its final name; durable once this returns."""
        self._scratch.remove()
        self.store.sync()  # (the dump's seal did; anything written since)
        try:
            fsync_dir(self.path / DATA_DIR)
            fsync_dir(self.path)
            if self.final_path.exists():
                raise OutputExists(
                    f"{self.final_path} appeared while the dump ran",
                    hint=f"the finished backup is left at {self.path}",
                )
            os.rename(self.path, self.final_path)
            fsync_dir(self.parent)
        except OSError as exc:
            raise _output_error(exc, self.final_path) from exc
        return self.final_path

    def remove(self) -> None:
        """Delete the ``.partial`` directory and everything in it."""
        shutil.rmtree(self.path, ignore_errors=True)

    def written(self) -> Backup:
        from .backup import open_backup

        return open_backup(self.path, in_progress=True, increments=True)

    def scratch_directory(self) -> Path:
        """``schema/`` inside the backup; for an encrypted backup a private temporary
        directory outside it, so that pg_dump's plaintext never sits in the backup."""
        directory = self.path / SCHEMA_DIR
        directory.mkdir(mode=0o700, exist_ok=True)  # where the schema files go
        return self._scratch.path() if self.recipients else directory

    def abandon(self, keep_partial: bool) -> str | None:
        self._scratch.remove()
        if not keep_partial:
            self.remove()
            return None
        for small in (MANIFEST_NAME, SUMS_NAME):
            (self.path / small).unlink(missing_ok=True)
        return str(self.path)


def validate_backup_name(name: str) -> None:
    """A backup name is one path component without the reserved suffix."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\x00" in name
        or name.endswith(PARTIAL_SUFFIX)
        or len(name.encode()) > 200
    ):
        raise UsageError(
            f"invalid backup name {name!r}",
            hint="--name takes one directory name (no '/', not ending in .partial)",
        )


LOCK_NAME = ".asyncsnap.lock"


class OutputLock:
    """An exclusive ``flock`` on ``<output>/.asyncsnap.lock`` while a dump writes there.

    The kernel releases it when the holder exits, however it dies, so a stale lock from a
    dead process never blocks a run: its file may remain and is simply locked again.
    (flock is advisory and local: two machines writing to one NFS directory are not
    protected.) The file holds the holder's pid for the error message and is removed on
    release.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_NAME
        self._fd: int | None = None

    def _refuse(self, why: str) -> OutputError:
        return OutputError(
            f"refusing the lock file {self.path}: {why}",
            hint="someone else put it there; remove it, and check who may write to "
            f"{self.path.parent}",
        )

    def _open(self) -> int:
        """Open (or create) the lock file without following a link, and check that it is
        a plain file of ours: in a directory others may write to, a link or a hard link
        planted there would make us truncate and write whatever it points to."""
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._refuse("it is a symbolic link") from exc
            raise _output_error(exc, self.path) from exc
        info = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(info.st_mode):
            problem = "it is not a regular file"
        elif info.st_nlink != 1:
            problem = "it has other hard links"
        elif info.st_uid != os.geteuid():
            problem = f"it belongs to uid {info.st_uid}, not to this user"
        if problem is not None:
            os.close(fd)
            raise self._refuse(problem)
        return fd

    def acquire(self) -> None:
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise OutputLocked(
                    f"another asyncsnap run (pid {holder}) is writing to {self.path.parent}",
                    hint="wait for it to finish, or use another -o directory",
                ) from exc
            # The holder before us may have removed the file after we opened it: then we
            # locked an orphan and must start again on the new file.
            try:
                same = os.fstat(fd).st_ino == os.lstat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = None
