"""The store interface: where a backup's bytes live, as a flat namespace of named objects.

One byte-level interface for every place a backup can be (restic's backend split): a
local directory (``LocalStore``), an object store (``s3.S3Store``) and memory
(``MemoryStore``, for tests and for checking the layers above without a server). Nothing
here knows what a backup, a manifest or a compression is: the backup layer above
(``backup``, ``files``, ``prefix``) does hashing, compression and encryption once, for
every store.

Names are ``/``-separated and relative to the store's root (a directory, a bucket prefix).
Every call is synchronous and blocking: callers run them in worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ..errors import DiskFull, OutputError, OutputExists, OutputNotWritable, StoreFailed
from ..regular_files import open_regular

READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredObject:
    key: str  # relative to the store's root
    size: int
    modified: datetime | None = None
    etag: str | None = None  # an object store's entity tag (None: a local file)


class ObjectMissing(StoreFailed):
    """Raised by ``Store.open_read`` and ``Store.open`` when no object has the name."""


class Sink(Protocol):
    """A streamed write of one object: ``finish`` makes the bytes durable under the name;
    ``discard`` (or a failed ``write``) leaves nothing under it."""

    where: str  # for messages: a path or a URL

    def write(self, block: bytes) -> None: ...
    def finish(self) -> None: ...
    def discard(self) -> None: ...


class Store(Protocol):
    """A place that holds named objects. Implementations: ``LocalStore``,
    ``s3.S3Store``, ``MemoryStore``."""

    @property
    def where(self) -> str:
        """The root, for messages: a directory or ``s3://bucket/prefix``."""
        ...

    def open_read(self, name: str, *, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        """Start reading ``name`` now (``ObjectMissing`` if it does not exist) and return
        its bytes as chunks of about ``chunk_size``."""
        ...

    def put(self, name: str, data: bytes) -> None:
        """Write a small object whole, replacing one of that name, durably."""
        ...

    def put_new(self, name: str, data: bytes) -> None:
        """Write ``name`` only if nothing has that name yet (a conditional create);
        ``OutputExists`` otherwise."""
        ...

    def sink(self, name: str) -> Sink:
        """A streamed write of ``name``: nothing appears under it until ``finish``."""
        ...

    def objects(self, under: str = "") -> list[StoredObject]:
        """Every object below the root (and below ``under``), names relative to the root."""
        ...

    def delete(self, names: Sequence[str]) -> None:
        """Remove these objects; one that is already gone is not an error."""
        ...

    def local_path(self, name: str) -> Path | None:
        """``name`` as a file of this machine a program can open and seek in, or None
        when the store is not a local directory."""
        ...


def open_object(store: Store, name: str) -> io.BufferedIOBase:
    """``name``'s bytes as a buffered binary file (``ObjectMissing`` if missing)."""
    return io.BufferedReader(ChunksReader(store.open_read(name)), READ_CHUNK)


def exists(store: Store, name: str) -> bool:
    """Whether an object has the name ``name``. A GET, not a HEAD: a HEAD's 404 has no
    body to say NoSuchKey, and SeaweedFS's was retried as if the store were down."""
    try:
        chunks = store.open_read(name)
    except ObjectMissing:
        return False
    close = getattr(chunks, "close", None)
    if close is not None:
        close()
    return True


class ChunksReader(io.RawIOBase):
    """A raw stream over an iterator of byte chunks (the plaintext of an age file, an
    object read from a store); closing it closes the iterator."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._rest = b""

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()

    def readinto(self, buffer: Any) -> int:
        while not self._rest:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._rest = chunk
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


# --- a local directory -------------------------------------------------------------------


def output_error(exc: OSError, path: Path) -> OutputError:
    """A failed local write as the error a user can act on (disk full, not writable)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(
            f"no space left on device while writing {path}",
            hint="free space or choose another -o directory; nothing was kept",
        )
    if exc.errno == errno.EFBIG:
        return DiskFull(
            f"file too large while writing {path} (file size limit)",
            hint="raise the limit (ulimit -f) or choose another -o directory; nothing was kept",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputNotWritable(
            f"cannot write {path}: {exc.strerror}",
            hint="choose a directory you can write to with -o",
        )
    return OutputError(f"cannot write {path}: {exc.strerror or exc}", hint=None)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, content: bytes) -> None:
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view) :]


def write_file_atomic(root: Path, relpath: str, content: bytes) -> None:
    """Write a small file under a temporary name, fsync it, rename it into place."""
    write_file_streamed(root, relpath, lambda write: write(content))


def write_file_streamed(
    root: Path, relpath: str, produce: Callable[[Callable[[bytes], object]], object]
) -> None:
    """``write_file_atomic`` of what ``produce`` hands its ``write`` piece by piece (a
    manifest, table by table: never all of it in memory)."""
    final = root / relpath
    temp = final.with_name("." + final.name + ".tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "wb", buffering=_STREAMED_BUFFER, closefd=False) as out:
                produce(out.write)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, final)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise output_error(exc, final) from exc


# write_file_streamed's buffer: a manifest's pieces are a table's entry each (~1.5 KB).
_STREAMED_BUFFER = 1 << 20


class LocalFileSink:
    """A file written under a temporary name (``.NAME.tmp``, created 0600, never an
    existing one), fsynced and renamed by ``finish``; or, given ``unsynced``, renamed and
    added to it, for its owner to fsync later with the others (``LocalStore.sync``).

    Nothing touches the disk before the first ``write`` or ``finish``: making a sink is
    free, so the dump makes a small table's writer on the event loop and creates,
    writes and renames its file in one hop to a thread (``jobs.run_chunk``)."""

    def __init__(
        self, final_path: Path, unsynced: list[str] | None = None, *, attempt: str = ""
    ) -> None:
        """``attempt``: a part of the temporary name, for writers of one name in several
        processes (``jobs.FileTarget``: a cluster task run again while a killed run's
        temporary file is still there)."""
        self.final_path = final_path
        self._unsynced = unsynced
        self.where = str(final_path)
        tag = f".{attempt}" if attempt else ""
        self.temp_path = final_path.with_name("." + final_path.name + tag + ".tmp")
        self._fd: int | None = None
        self._state = "new"  # then "open", "finished", "discarded"

    def _open(self) -> int:
        if self._fd is None:
            assert self._state == "new", self._state
            try:
                self._fd = os.open(
                    self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
                )
            except OSError as exc:
                raise output_error(exc, self.temp_path) from exc
            self._state = "open"
        return self._fd

    def write(self, block: bytes) -> None:
        fd = self._open()
        try:
            _write_all(fd, block)
        except OSError as exc:
            raise output_error(exc, self.final_path) from exc

    def finish(self) -> None:
        fd = self._open()
        try:
            if self._unsynced is None:
                os.fsync(fd)
            os.close(fd)
            self._fd = None
            self._state = "finished"
            os.rename(self.temp_path, self.final_path)
        except OSError as exc:
            raise output_error(exc, self.final_path) from exc
        if self._unsynced is not None:
            # (a str, not the Path: ten thousand of those weigh some MB; list.append
            # takes one thread at a time)
            self._unsynced.append(self.where)

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        state, self._state = self._state, "discarded"
        if state in ("new", "discarded"):
            return  # nothing of ours on disk: never a file someone else made there
        for path in (self.temp_path, self.final_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


# Threads that fsync a deferred batch of files: the kernel writes them back together and
# commits the journal for many at once. Measured on this project's 2-core VM (ext4), 5,000
# files of 300 bytes: fsynced one by one as written 12.3 s; fsynced at the end from one
# thread 5.1 s, from 8 threads 0.6 s. (pg_dump too syncs its files at its end.)
SYNC_THREADS = 8


class LocalStore:
    """A directory of this machine as a store: names are paths below ``root``; a name's
    folders are created 0700 on write, files 0600, every write fsynced. With
    ``deferred_sync``, streamed files (``sink``) are fsynced by ``sync`` instead, all at
    once: their owner calls it before anything names them as written."""

    def __init__(self, root: Path, *, deferred_sync: bool = False, attempt: str = "") -> None:
        self.root = root
        self._unsynced: list[str] | None = [] if deferred_sync else None
        self._attempt = attempt  # ``LocalFileSink``'s
        self._folders: set[Path] = set()  # made (or found) by this store: not asked again

    def sync(self) -> None:
        """Make every file streamed since the last call durable, and their folders."""
        if not self._unsynced:
            return
        paths, self._unsynced[:] = list(self._unsynced), []
        folders = sorted({os.path.dirname(p) for p in paths})

        def fsync_file(path: str) -> None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise output_error(exc, Path(path)) from exc

        def fsync_files(share: list[str]) -> None:
            for path in share:
                fsync_file(path)

        # A share of the files for each thread, not a task for each file: ten thousand
        # futures were 18 MB at the dump's peak (tracemalloc).
        shares = [paths[i::SYNC_THREADS] for i in range(SYNC_THREADS)]
        with ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="asyncsnap-sync") as pool:
            for _ in pool.map(fsync_files, shares):
                pass
        for folder in folders:
            try:
                fsync_dir(Path(folder))
            except OSError as exc:
                raise output_error(exc, Path(folder)) from exc

    @property
    def where(self) -> str:
        return str(self.root)

    def _path(self, name: str) -> Path:
        # Names come from the backup layer, which checked them (format.safe_relative_path)
        # before anything is read or written; this is the last guard against '..'.
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"not a store name: {name!r}")
        return self.root.joinpath(*parts)

    def _folder_for(self, path: Path) -> None:
        if path.parent in self._folders:
            return  # a dump's ten thousand files share one folder
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(exc, path.parent) from exc
        self._folders.add(path.parent)

    def open_read(self, name: str, *, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        path = self._path(name)
        try:
            fh = open_regular(path)  # closed by _FileChunks, which owns it
        except FileNotFoundError as exc:
            raise ObjectMissing(f"{path} is missing", hint=None) from exc
        return _FileChunks(fh, chunk_size)

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        self._folder_for(path)
        write_file_atomic(path.parent, path.name, data)

    def put_new(self, name: str, data: bytes) -> None:
        path = self._path(name)
        self._folder_for(path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError as exc:
            raise OutputExists(f"{path} already exists", hint="give another --name") from exc
        except OSError as exc:
            raise output_error(exc, path) from exc
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            path.unlink()
            raise output_error(exc, path) from exc
        os.close(fd)

    def sink(self, name: str) -> Sink:
        path = self._path(name)
        self._folder_for(path)
        return LocalFileSink(path, self._unsynced, attempt=self._attempt)

    def objects(self, under: str = "") -> list[StoredObject]:
        base = self._path(under) if under else self.root
        found: list[StoredObject] = []
        for folder, _, files in os.walk(base):
            for file in files:
                path = Path(folder, file)
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    modified = datetime.fromtimestamp(st.st_mtime, UTC)
                    key = path.relative_to(self.root).as_posix()
                    found.append(StoredObject(key, st.st_size, modified))
        return sorted(found, key=lambda o: o.key)

    def delete(self, names: Sequence[str]) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                self._path(name).unlink()

    def local_path(self, name: str) -> Path | None:
        return self._path(name)


class _FileChunks:
    """A local file's bytes as chunks; ``close`` closes the file even when no chunk was
    read (a generator never started would not run its ``with``)."""

    def __init__(self, fh: io.BufferedReader, chunk_size: int) -> None:
        self._fh = fh
        self._chunk_size = chunk_size

    def __iter__(self) -> _FileChunks:
        return self

    def __next__(self) -> bytes:
        if self._fh.closed:
            raise StopIteration
        block = self._fh.read(self._chunk_size)
        if not block:
            self._fh.close()
            raise StopIteration
        return block

    def close(self) -> None:
        self._fh.close()


# --- memory ------------------------------------------------------------------------------


class _MemorySink:
    def __init__(self, store: MemoryStore, name: str) -> None:
        self._store = store
        self._name = name
        self._parts: list[bytes] | None = []
        self.where = f"{store.where}/{name}"

    def write(self, block: bytes) -> None:
        assert self._parts is not None, "write after finish or discard"
        self._parts.append(bytes(block))

    def finish(self) -> None:
        assert self._parts is not None
        self._store.put(self._name, b"".join(self._parts))
        self._parts = None

    def discard(self) -> None:
        self._parts = None


class MemoryStore:
    """A store held in a dict: for tests of the layers above, and to count what they do
    (``reads``, ``writes``) without a server."""

    def __init__(self, label: str = "memory://") -> None:
        self._objects: dict[str, tuple[bytes, datetime]] = {}
        self._lock = threading.Lock()
        self.label = label
        self.reads = 0
        self.writes = 0

    @property
    def where(self) -> str:
        return self.label

    def open_read(self, name: str, *, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        with self._lock:
            found = self._objects.get(name)
            self.reads += 1
        if found is None:
            raise ObjectMissing(f"{self.where}/{name} is missing", hint=None)
        data = found[0]
        return iter([data[i : i + chunk_size] for i in range(0, len(data), chunk_size)])

    def put(self, name: str, data: bytes) -> None:
        with self._lock:
            self._objects[name] = (bytes(data), datetime.now(UTC))
            self.writes += 1

    def put_new(self, name: str, data: bytes) -> None:
        with self._lock:
            if name in self._objects:
                raise OutputExists(f"{self.where}/{name} already exists", hint=None)
            self._objects[name] = (bytes(data), datetime.now(UTC))
            self.writes += 1

    def sink(self, name: str) -> Sink:
        return _MemorySink(self, name)

    def objects(self, under: str = "") -> list[StoredObject]:
        prefix = under.rstrip("/") + "/" if under else ""
        with self._lock:
            return [
                StoredObject(key, len(data), when)
                for key, (data, when) in sorted(self._objects.items())
                if key.startswith(prefix)
            ]

    def delete(self, names: Sequence[str]) -> None:
        with self._lock:
            for name in names:
                self._objects.pop(name, None)

    def local_path(self, name: str) -> Path | None:
        return None
