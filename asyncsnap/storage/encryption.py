"""age encryption of a backup's files, streamed, so that a host that writes backups needs
only a public key and cannot read them back.

age (https://age-encryption.org, format C2SP age v1) is a standard, small, authenticated
streaming format: a header with one stanza per recipient, then the payload in 64 KiB
ChaCha20-Poly1305 chunks, each authenticated, the last one marked. Its own CLI decrypts
our files (``age -d -i key.txt FILE | zstd -dc | jq``). We use pyrage (the Python binding
of rage, the Rust implementation), not hand-written cryptography: measured here, 200 MiB
encrypted at ~310 MiB/s and decrypted at ~340 MiB/s with 19-20 MiB peak RSS, and Debian's
``age`` 1.1.1 decrypted the result byte for byte.

pyrage reads from and writes to file objects (``encrypt_io``/``decrypt_io``); the dump
pushes batches. ``EncryptingStage`` joins the two with a pipe and one thread per open
file: the writer's thread writes plaintext into the pipe, the stage's thread encrypts
from it into the next stage (which hashes the stored bytes and hands them to the sink).
A failure on either side ends the other: the pipe is closed, nothing waits forever.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import queue
import threading
import weakref
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from ..errors import UsageError, VerificationFailed

PIPE_CHUNK = 1 << 20
_T = TypeVar("_T")
AGE_MAGIC = b"age-encryption.org/v1\n"  # the first line of every age file


class ByteSink(Protocol):
    def write(self, block: bytes) -> None: ...


def encrypt_whole(content: bytes, recipients: list[Any]) -> bytes:
    """A small file's bytes as an age file to ``recipients`` (``EncryptingStage`` streams
    the data files; ``decrypted`` reads either back)."""
    import pyrage

    return pyrage.encrypt(content, recipients)


def parse_recipients(values: Iterable[str]) -> list[Any]:
    """``--encrypt-to`` values: an age public key (``age1...``), or a file of them, one
    per line (``#`` comments), as ``age -R`` reads.

    :raises UsageError: for anything that is not a recipient (never a silent skip).
    """
    from pyrage import x25519

    texts: list[tuple[str, str]] = []
    for value in values:
        if value.startswith("age1"):
            texts.append((value, value))
            continue
        path = Path(value)
        if not path.is_file():
            raise UsageError(
                f"--encrypt-to {value!r} is neither an age public key (age1...) nor a file",
                hint="generate a key pair with age-keygen; give its public key",
            )
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                texts.append((line, f"{path}, line {number}"))
    recipients = []
    for text, where in texts:
        try:
            recipients.append(x25519.Recipient.from_str(text))
        except Exception as exc:  # pyrage.RecipientError, or a ValueError
            raise UsageError(
                f"not an age public key: {where}",
                hint="an age recipient looks like age1 followed by 58 characters",
            ) from exc
    if not recipients:
        raise UsageError("--encrypt-to names no recipient", hint="give an age1... public key")
    return recipients


def load_identities(path: str | Path) -> list[Any]:
    """An age identity file (``AGE-SECRET-KEY-1...`` lines, ``#`` comments), as
    ``age-keygen`` writes it. The key is never printed, whatever is wrong with the file."""
    from pyrage import x25519

    file = Path(path)
    try:
        lines = file.read_text().splitlines()
    except OSError as exc:
        raise UsageError(
            f"cannot read the identity file {file}: {exc.strerror}",
            hint="--identity takes the file age-keygen wrote",
        ) from exc
    identities = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(x25519.Identity.from_str(line))
        except Exception:
            raise UsageError(  # from None: the exception would carry the line, the secret
                f"{file}, line {number}, is not an age secret key",
                hint="--identity takes the file age-keygen wrote (AGE-SECRET-KEY-1...)",
            ) from None
    if not identities:
        raise UsageError(f"{file} holds no age secret key", hint="give the age-keygen file")
    return identities


class _SinkFile(io.BufferedIOBase):
    """The file object pyrage writes the encrypted stream to: forwards to the next stage
    and keeps the first error, so the caller sees it (DiskFull, StoreFailed) rather than
    pyrage's wrapping of it."""

    def __init__(self, sink: ByteSink) -> None:
        self._sink = sink
        self.error: BaseException | None = None
        self.aborted = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.aborted:  # pyrage then fails instead of writing a final chunk
            raise OSError("aborted")
        try:
            self._sink.write(bytes(data))
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            raise
        return len(data)

    def flush(self) -> None:
        pass


class EncryptingStage:
    """Encrypts what is written to it, for ``recipients``, into ``sink``: the age file,
    streamed. ``close`` ends the stream (the last chunk and its tag); ``abort`` stops
    without one, so that a partial file can never decrypt as complete."""

    def __init__(self, sink: ByteSink, recipients: list[Any]) -> None:
        import pyrage

        read_fd, write_fd = os.pipe()
        self._source = io.BufferedReader(io.FileIO(read_fd, "rb"))
        self._pipe: IO[bytes] | None = os.fdopen(write_fd, "wb", buffering=0)
        self._out = _SinkFile(sink)
        self._error: BaseException | None = None

        def run() -> None:
            try:
                pyrage.encrypt_io(self._source, self._out, recipients)
            except BaseException as exc:
                self._error = exc
            finally:
                self._source.close()  # a writer blocked on the pipe gets EPIPE, not a hang

        self._thread = threading.Thread(target=run, name="asyncsnap-age", daemon=True)
        self._thread.start()

    def write(self, block: bytes) -> None:
        assert self._pipe is not None, "write after close"
        try:
            view = memoryview(block)
            while view:
                view = view[self._pipe.write(view[:PIPE_CHUNK]) or 0 :]
        except BrokenPipeError:
            self._thread.join()
            raise self._failure() from None

    def close(self) -> None:
        """End the stream and wait until every encrypted byte reached the sink."""
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        self._thread.join()
        if self._error is not None:
            raise self._failure()

    def abort(self) -> None:
        """Stop: the stream gets no final chunk, and the sink's file is discarded by the
        caller. Safe after a failure and more than once."""
        self._out.aborted = True  # so that end of input fails the stream, not completes it
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        self._thread.join()

    def _failure(self) -> BaseException:
        if self._out.error is not None:
            return self._out.error
        return OSError(f"age encryption failed: {self._error}")


class Decryption(io.RawIOBase):
    """The plaintext of the age file read from ``source``, as a raw stream.

    pyrage decrypts from one file object into another, so it runs in a thread of its own:
    it reads ``source`` and hands the plaintext over a small queue (a few chunks: memory
    stays bounded) to whoever reads this stream. ``stop`` ends that thread from any state
    (waiting for room in the queue, or about to read ``source``) and waits for it: no
    decryption thread outlives its reader, and none is left running into the
    interpreter's shutdown (a daemon thread inside pyrage's native code at exit aborted
    the process: "Fatal Python error: Aborted", exit 134). Streams not stopped by their
    owner are stopped at exit.

    A file that does not decrypt (another key, a changed or cut byte: every 64 KiB chunk
    is authenticated) raises ``VerificationFailed`` naming ``where`` once the bad chunk is
    reached; what came before it was authentic, but the caller must treat the whole file
    as failed."""

    def __init__(self, source: io.BufferedIOBase, identities: list[Any], *, where: str) -> None:
        self._source = source
        self._where = where
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUED_CHUNKS)
        self._stopped = threading.Event()
        self._error: BaseException | None = None  # pyrage's
        self._source_error: BaseException | None = None  # reading the encrypted file
        self._pending = memoryview(b"")
        self._ended = False
        self._thread = threading.Thread(
            target=self._run, args=(identities,), name="asyncsnap-age-read", daemon=True
        )
        with _LIVE_LOCK:
            _LIVE.add(self)
        self._thread.start()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            if self._ended:
                return 0
            item = self._queue.get()  # the thread always ends with None (unless stopped)
            if item is None:
                self._ended = True
                self.stop()
                if self._source_error is not None:
                    # The stored bytes could not be read (a store's outage, a disk's
                    # error): that, as on a plain backup, not "does not decrypt".
                    raise self._source_error
                if self._error is not None:
                    raise VerificationFailed(
                        f"{self._where} does not decrypt: {_one_line(self._error)}",
                        hint="check --identity (the key the backup was encrypted to); a file "
                        "changed after the dump cannot be decrypted either",
                    )
                return 0
            self._pending = memoryview(item)
        size = min(len(buffer), len(self._pending))
        memoryview(buffer).cast("B")[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def stop(self, timeout: float | None = None) -> None:
        """End the decryption (if still running) and wait for its thread (up to
        ``timeout`` seconds). Safe from any thread, and more than once."""
        self._stopped.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        while True:  # what was decrypted but not read: freed now
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._pending = memoryview(b"")
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def close(self) -> None:
        self.stop()
        super().close()

    def _run(self, identities: list[Any]) -> None:
        import pyrage

        try:
            pyrage.decrypt_io(_StoppableSource(self), _QueueSink(self), identities)
        except BaseException as exc:  # reported to the reader, at the end of the stream
            self._error = exc
        finally:
            with contextlib.suppress(_Stopped):
                self._put(None)

    def _put(self, item: bytes | None) -> None:
        while True:
            if self._stopped.is_set():
                raise _Stopped
            try:
                self._queue.put(item, timeout=_STOP_POLL)
                return
            except queue.Full:
                continue


class _Stopped(OSError):
    """Raised inside pyrage's callbacks once the reader stopped: it ends the decryption."""

    def __init__(self) -> None:
        super().__init__("the reader stopped")


class _StoppableSource(io.BufferedIOBase):
    """The encrypted file as pyrage reads it: refuses to read once the reader stopped."""

    def __init__(self, owner: Decryption) -> None:
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._read(lambda: self._owner._source.readinto(buffer))

    def read(self, size: int | None = -1) -> bytes:
        return self._read(lambda: self._owner._source.read(size))

    def _read(self, read: Callable[[], _T]) -> _T:
        if self._owner._stopped.is_set():
            raise _Stopped
        try:
            return read()
        except BaseException as exc:  # the store's outage is the reader's error, not age's
            if self._owner._source_error is None:
                self._owner._source_error = exc
            raise


class _QueueSink(io.BufferedIOBase):
    """Where pyrage writes the plaintext: into the reader's queue, a chunk at a time."""

    def __init__(self, owner: Decryption) -> None:
        self._owner = owner

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        if chunk:
            self._owner._put(chunk)
        return len(chunk)

    def flush(self) -> None:
        pass


_QUEUED_CHUNKS = 16  # pyrage writes 64 KiB chunks: about 1 MiB decrypted ahead
_STOP_POLL = 0.05  # seconds a full queue waits before looking at the stop flag again
_LIVE: weakref.WeakSet[Decryption] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_all() -> None:
    """At exit, before the interpreter shuts down: no decryption thread is left inside
    pyrage (one that was there when the process ended aborted it)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for decryption in live:
        # Bounded: a read of the stored file that never returns (a store's connection
        # without a timeout) must not keep the process from exiting.
        decryption.stop(timeout=60)


def decrypted(
    source: io.BufferedIOBase, identities: list[Any], *, where: str
) -> Generator[bytes, None, None]:
    """The plaintext of the age file read from ``source``, in chunks (``Decryption``)."""
    stream = Decryption(source, identities, where=where)
    try:
        while chunk := stream.read(PIPE_CHUNK):
            yield chunk
    finally:
        stream.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
