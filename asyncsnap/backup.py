"""Reading a backup: the manifest checked field by field, and data files checked while read.

``open_backup`` does, in the order docs/format.md prescribes, everything a reader must
do before trusting a file: refuse ``.partial`` directories, check the format and version,
the manifest's own checksum, every field's type and range, and every file path (relative,
no ``..``, no symlink, inside the backup). Nothing is opened or sent to a server before it
passes. ``DataFileReader`` then streams one file, hashing the stored bytes and counting
lines, and ``finish`` compares both with the manifest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import zstandard

from . import manifest
from .catalog import SchemaQualified
from .errors import VerificationFailed
from .session import checked_render_settings
from .storage import COMPRESSIONS, PARTIAL_SUFFIX, Compression

_MAX_COUNT = 2**63 - 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_READ_BLOCK = 1 << 20
_ENCODINGS = ("json", "text", "array")
_KINDS = ("table", "partitioned", "partition")
_GENERATED = ("stored", "virtual")
_IDENTITY = ("always", "by default")
_TOOL_VERSION = re.compile(r"[0-9]{1,3}(\.[0-9]{1,4})?")
# Where a backup keeps its schema (``schema.py`` writes them; fixed, never from a manifest).
SCHEMA_ARCHIVE_PATH = "schema/schema.pgdump"
SCHEMA_SQL_PATH = "schema/schema.sql"

# The longest line a data file holds unless its manifest entry says more. The server
# renders each row as one text value, and no value can exceed 1 GiB - 1 byte
# (MaxAllocSize); a line is that plus its newline. A row too big for that is rendered
# column by column (``bigrows``) and its file's entry records the longest such line.
# Dump, verify and restore read through ``DataFileReader`` and so share this bound; a
# reader holds at most one line and one read block in memory at a time.
MAX_LINE_BYTES = 1 << 30

# The kinds of ``skipped`` entries (docs/format.md, "What is not in a backup").
SKIP_KINDS = (
    "table",
    "sequence",
    "materialized view",
    "foreign table",
    "extension table",
    "extension sequence",
    "unlogged table",
    "large objects",
)
# The keys of every line of a large-object file, in order.
LARGE_OBJECT_KEYS = ("oid", "owner", "acl", "offset", "data")


@dataclass(frozen=True)
class BackupFile:
    path: str
    rows: int
    bytes: int
    stored_bytes: int
    sha256: str
    longest_line: int | None = None  # set when a row was longer than MAX_LINE_BYTES allows

    @property
    def line_limit(self) -> int:
        """The longest line a reader accepts in this file."""
        return max(MAX_LINE_BYTES, self.longest_line or 0)


@dataclass(frozen=True)
class BackupColumn:
    name: str
    type: str
    encoding: str
    not_null: bool
    generated: str | None
    identity: str | None


@dataclass(frozen=True)
class BackupTable(SchemaQualified):
    schema: str
    name: str
    kind: str
    parent: tuple[str, str] | None
    rows: int
    columns: tuple[BackupColumn, ...]
    files: tuple[BackupFile, ...]
    row_security: bool = False  # holds only the rows the dumping role could see

    @property
    def has_data(self) -> bool:
        return self.kind != "partitioned"


@dataclass(frozen=True)
class BackupSequence(SchemaQualified):
    schema: str
    name: str
    table: tuple[str, str] | None  # None: a standalone sequence (format version 2)
    last_value: int
    is_called: bool


@dataclass(frozen=True)
class BackupLargeObjects:
    """The large objects in a backup: how many, their bytes, and the files holding them."""

    objects: int
    bytes: int
    files: tuple[BackupFile, ...]


@dataclass(frozen=True)
class SchemaFile:
    """A schema file of the backup: stored as pg_dump or pg_restore wrote it."""

    path: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class BackupSchema:
    """The backup's schema (``schema.py``): pg_dump's custom archive and its plain SQL."""

    pg_dump_version: str
    archive: SchemaFile
    sql: SchemaFile

    @property
    def pg_dump_major(self) -> int:
        return int(self.pg_dump_version.split(".")[0])

    @property
    def files(self) -> tuple[SchemaFile, SchemaFile]:
        return (self.archive, self.sql)


@dataclass(frozen=True)
class Skipped:
    """Something the filters selected that the backup does not hold, and why; the
    manifest's ``skipped`` entries have exactly these fields.

    ``kind`` is one of ``SKIP_KINDS``; ``schema`` and ``name`` are None for
    ``large objects``; ``refresh`` is true for a materialized view that was populated at
    dump time, which a restore refreshes.
    """

    kind: str
    schema: str | None
    name: str | None
    reason: str
    refresh: bool = False

    @property
    def qualified(self) -> str:
        if self.schema is None or self.name is None:
            return self.kind
        return f"{self.schema}.{self.name}"

    def describe(self) -> str:
        """``materialized view public.totals: <reason>``, for people."""
        if self.schema is None or self.name is None:
            return f"{self.kind}: {self.reason}"
        return f"{self.kind} {self.qualified}: {self.reason}"


@dataclass(frozen=True)
class Backup:
    """A backup whose manifest passed every check; files are checked when read."""

    path: Path
    manifest: dict[str, Any]
    compression: Compression
    settings: dict[str, str]
    tables: tuple[BackupTable, ...]
    sequences: tuple[BackupSequence, ...]
    skipped: tuple[Skipped, ...] = ()  # selected but not in the backup, with the reason
    large_objects: BackupLargeObjects | None = None
    schema: BackupSchema | None = None  # None: data only (--no-schema, or format < 3)

    def file_path(self, f: BackupFile) -> Path:
        return self.path / f.path

    def data_files(self) -> list[tuple[tuple[str, ...], BackupFile]]:
        """Every data file with the keys each of its lines must have, in order."""
        found = [(tuple(c.name for c in t.columns), f) for t in self.tables for f in t.files]
        if self.large_objects is not None:
            found += [(LARGE_OBJECT_KEYS, f) for f in self.large_objects.files]
        return found


class _Checker:
    """Walks the manifest and reports the first field of the wrong type, by its path."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, where: str, what: str) -> VerificationFailed:
        return VerificationFailed(
            f"{self.source}: {where} {what}",
            hint="the manifest was written by something else or damaged; do not trust it",
        )

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, "is not an object")
        return value

    def lst(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(where, "is not a list")
        return value

    def string(self, value: Any, where: str, *, allow_none: bool = False) -> Any:
        if value is None and allow_none:
            return None
        if not isinstance(value, str) or "\x00" in value:
            raise self.fail(where, "is not a string")
        return value

    def count(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
            raise self.fail(where, "is not a non-negative integer")
        return value

    def integer(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) > _MAX_COUNT + 1:
            raise self.fail(where, "is not an integer")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, "is not true or false")
        return value

    def choice(self, value: Any, where: str, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.fail(where, f"is not one of {', '.join(options)}")
        return str(value)

    def ref(self, value: Any, where: str) -> tuple[str, str]:
        o = self.obj(value, where)
        return (
            self.string(o.get("schema"), f"{where}.schema"),
            self.string(o.get("name"), f"{where}.name"),
        )


def safe_relative_path(root: Path, relpath: str, checker: _Checker, where: str) -> None:
    """Refuse paths that could leave the backup: absolute, ``..``, backslashes, symlinks."""
    pure = PurePosixPath(relpath)
    if (
        not relpath
        or pure.is_absolute()
        or "\\" in relpath
        or any(part in ("..", ".", "") for part in relpath.split("/"))
    ):
        raise checker.fail(where, f"has an unsafe path {relpath!r}")
    target = root / relpath
    current = root
    for part in pure.parts:
        current = current / part
        if current.is_symlink():
            raise checker.fail(where, f"path {relpath!r} goes through a symlink")
    resolved_root = root.resolve()
    if not str(target.resolve()).startswith(str(resolved_root) + os.sep):
        raise checker.fail(where, f"path {relpath!r} leaves the backup directory")


def open_backup(path: str | Path, *, in_progress: bool = False) -> Backup:
    """Open a backup directory and check its manifest (not yet the data files).

    ``in_progress`` is for the dump checking its own ``.partial`` directory before the
    rename (``dump --verify``); everyone else refuses a ``.partial``.

    :raises VerificationFailed: for anything in the manifest a reader must not trust.

    >>> backup = open_backup("backups/backup_20261124T021500Z")  # doctest: +SKIP
    """
    root = Path(path)
    if root.name.endswith(PARTIAL_SUFFIX) and not in_progress:
        raise VerificationFailed(
            f"{root} is an incomplete backup (a dump that failed, was interrupted or is "
            "still running)",
            hint="use a backup directory without the .partial suffix",
        )
    if not root.is_dir():
        raise VerificationFailed(f"{root} is not a directory", hint="give a backup directory")
    body = manifest.load(root)
    c = _Checker(root / manifest.MANIFEST_NAME)
    version = body["format_version"]
    compression = c.choice(body.get("compression"), "compression", COMPRESSIONS)
    settings_raw = c.obj(body.get("settings"), "settings")
    settings = checked_render_settings(
        {
            c.string(k, "settings key"): c.string(v, f"settings.{k}")
            for k, v in settings_raw.items()
        },
        source=str(root / manifest.MANIFEST_NAME),
    )
    seen_paths: set[str] = set()

    def read_files(raw: Any, where: str) -> tuple[BackupFile, ...]:
        files = []
        for j, f_raw in enumerate(c.lst(raw, where)):
            fw = f"{where}[{j}]"
            f = c.obj(f_raw, fw)
            relpath = c.string(f.get("path"), f"{fw}.path")
            safe_relative_path(root, relpath, c, f"{fw}.path")
            if relpath in seen_paths:
                raise c.fail(f"{fw}.path", f"{relpath!r} is listed twice")
            seen_paths.add(relpath)
            digest = c.string(f.get("sha256"), f"{fw}.sha256")
            if not _HEX64.fullmatch(digest):
                raise c.fail(f"{fw}.sha256", "is not a SHA-256 hex digest")
            files.append(
                BackupFile(
                    path=relpath,
                    rows=c.count(f.get("rows"), f"{fw}.rows"),
                    bytes=c.count(f.get("bytes"), f"{fw}.bytes"),
                    stored_bytes=c.count(f.get("stored_bytes"), f"{fw}.stored_bytes"),
                    sha256=digest,
                    longest_line=None
                    if f.get("longest_line") is None
                    else c.count(f.get("longest_line"), f"{fw}.longest_line"),
                )
            )
        return tuple(files)

    tables = []
    seen_tables: set[tuple[str, str]] = set()
    for i, t_raw in enumerate(c.lst(body.get("tables"), "tables")):
        w = f"tables[{i}]"
        t = c.obj(t_raw, w)
        columns = []
        for j, col_raw in enumerate(c.lst(t.get("columns"), f"{w}.columns")):
            cw = f"{w}.columns[{j}]"
            col = c.obj(col_raw, cw)
            generated = col.get("generated")
            identity = col.get("identity")
            columns.append(
                BackupColumn(
                    name=c.string(col.get("name"), f"{cw}.name"),
                    type=c.string(col.get("type"), f"{cw}.type"),
                    encoding=c.choice(col.get("encoding"), f"{cw}.encoding", _ENCODINGS),
                    not_null=c.boolean(col.get("not_null"), f"{cw}.not_null"),
                    generated=None
                    if generated is None
                    else c.choice(generated, f"{cw}.generated", _GENERATED),
                    identity=None
                    if identity is None
                    else c.choice(identity, f"{cw}.identity", _IDENTITY),
                )
            )
        if len({col.name for col in columns}) != len(columns):
            raise c.fail(f"{w}.columns", "has duplicate names")
        files = read_files(t.get("files"), f"{w}.files")
        parent = None if t.get("parent") is None else c.ref(t.get("parent"), f"{w}.parent")
        table = BackupTable(
            schema=c.string(t.get("schema"), f"{w}.schema"),
            name=c.string(t.get("name"), f"{w}.name"),
            kind=c.choice(t.get("kind"), f"{w}.kind", _KINDS),
            parent=parent,
            rows=c.count(t.get("rows"), f"{w}.rows"),
            columns=tuple(columns),
            files=files,
            # Absent before format version 2: nothing was read under row security.
            row_security=c.boolean(t.get("row_security", False), f"{w}.row_security"),
        )
        if table.rows != sum(f.rows for f in files):
            raise c.fail(f"{w}.rows", "is not the sum of its files' rows")
        if table.key in seen_tables:
            raise c.fail(w, f"lists {table.qualified} twice")
        seen_tables.add(table.key)
        tables.append(table)
    sequences = []
    for i, s_raw in enumerate(c.lst(body.get("sequences"), "sequences")):
        w = f"sequences[{i}]"
        s = c.obj(s_raw, w)
        owner_raw = s.get("table")
        if owner_raw is None and version < 2:
            raise c.fail(f"{w}.table", "is not an object")  # version 1 always names one
        sequences.append(
            BackupSequence(
                schema=c.string(s.get("schema"), f"{w}.schema"),
                name=c.string(s.get("name"), f"{w}.name"),
                table=None if owner_raw is None else c.ref(owner_raw, f"{w}.table"),
                last_value=c.integer(s.get("last_value"), f"{w}.last_value"),
                is_called=c.boolean(s.get("is_called"), f"{w}.is_called"),
            )
        )
    skipped = []
    # Absent in manifests written before asyncsnap 0.2: nothing was skipped.
    for i, k_raw in enumerate(c.lst(body.get("skipped", []), "skipped")):
        w = f"skipped[{i}]"
        k = c.obj(k_raw, w)
        kind = c.choice(k.get("kind"), f"{w}.kind", SKIP_KINDS)
        nameless = kind == "large objects"
        skipped.append(
            Skipped(
                kind=kind,
                schema=c.string(k.get("schema"), f"{w}.schema", allow_none=nameless),
                name=c.string(k.get("name"), f"{w}.name", allow_none=nameless),
                reason=c.string(k.get("reason"), f"{w}.reason"),
                refresh=c.boolean(k.get("refresh", False), f"{w}.refresh"),
            )
        )
    large_objects = None
    lo_raw = body.get("large_objects")
    if lo_raw is not None:
        lo = c.obj(lo_raw, "large_objects")
        large_objects = BackupLargeObjects(
            objects=c.count(lo.get("objects"), "large_objects.objects"),
            bytes=c.count(lo.get("bytes"), "large_objects.bytes"),
            files=read_files(lo.get("files"), "large_objects.files"),
        )
    backup_schema = None
    schema_raw = body.get("schema")
    if schema_raw is not None:
        sc = c.obj(schema_raw, "schema")
        version_text = c.string(sc.get("pg_dump_version"), "schema.pg_dump_version")
        if not _TOOL_VERSION.fullmatch(version_text):
            raise c.fail("schema.pg_dump_version", "is not a PostgreSQL version")

        def schema_file(key: str, expected: str) -> SchemaFile:
            w = f"schema.{key}"
            f = c.obj(sc.get(key), w)
            # The names are fixed: a manifest cannot point restore at another file.
            if f.get("path") != expected:
                raise c.fail(f"{w}.path", f"is not {expected!r}")
            safe_relative_path(root, expected, c, f"{w}.path")
            digest = c.string(f.get("sha256"), f"{w}.sha256")
            if not _HEX64.fullmatch(digest):
                raise c.fail(f"{w}.sha256", "is not a SHA-256 hex digest")
            seen_paths.add(expected)
            return SchemaFile(
                path=expected, bytes=c.count(f.get("bytes"), f"{w}.bytes"), sha256=digest
            )

        backup_schema = BackupSchema(
            pg_dump_version=version_text,
            archive=schema_file("archive", SCHEMA_ARCHIVE_PATH),
            sql=schema_file("sql", SCHEMA_SQL_PATH),
        )
    return Backup(
        path=root,
        manifest=body,
        compression=compression,  # type: ignore[arg-type]
        settings=settings,
        tables=tuple(tables),
        sequences=tuple(sequences),
        skipped=tuple(skipped),
        large_objects=large_objects,
        schema=backup_schema,
    )


def check_schema_file(backup: Backup, entry: SchemaFile) -> str | None:
    """What is wrong with a schema file (missing, size, SHA-256), or None."""
    path = backup.path / entry.path
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as fh:
            while block := fh.read(_READ_BLOCK):
                digest.update(block)
                size += len(block)
    except FileNotFoundError:
        return "is missing"
    if size != entry.bytes:
        return f"has {size} bytes, the manifest says {entry.bytes}"
    if digest.hexdigest() != entry.sha256:
        return "does not match its SHA-256 in the manifest"
    return None


class _HashingReader(io.RawIOBase):
    """A raw file that hashes and counts every byte read through it."""

    def __init__(self, fh: io.BufferedReader) -> None:
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


def _decompressing(kind: Compression, raw: _HashingReader) -> Any:
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
    ) -> None:
        self.backup = backup
        self.entry = entry
        self.path = backup.file_path(entry)
        self.block_size = block_size
        self.max_line = entry.line_limit if max_line is None else max_line
        self.rows = 0
        self.raw_bytes = 0
        self._fh: io.BufferedReader | None = None
        self._raw: _HashingReader | None = None
        self._stream: Any = None  # the decompressed stream while iterating
        self._pending = bytearray()  # the start of a line whose end was not read yet
        self._done = False

    def _fail(self, what: str) -> VerificationFailed:
        return VerificationFailed(
            f"{self.entry.path} {what}",
            hint="the backup is damaged; nothing from this file was kept",
        )

    def __iter__(self) -> DataFileReader:
        try:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - closed in finish/close
        except FileNotFoundError as exc:
            raise self._fail("is missing") from exc
        self._raw = _HashingReader(self._fh)
        self._stream = _decompressing(self.backup.compression, self._raw)
        return self

    def __next__(self) -> bytes | bytearray:
        """The next block of whole lines. A method, not a generator: no frame keeps the
        block alive once the caller lets go of it, which matters for a line of 1 GB."""
        if self._stream is None:
            raise StopIteration
        while True:
            try:
                data = self._stream.read(self.block_size)
            except (zstandard.ZstdError, zlib.error, OSError, EOFError) as exc:
                raise self._fail(f"cannot be decompressed: {exc}") from exc
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
            self.rows += block.count(b"\n")
            self.raw_bytes += len(block)
            return block

    def drain(self) -> None:
        """Hash whatever was not read yet (after an early stop)."""
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
        self._stream = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None
