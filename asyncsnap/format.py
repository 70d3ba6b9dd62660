"""The on-disk format in one place (docs/format.md): ``manifest.json`` and ``SHA256SUMS``,
the typed entries of a manifest with their serialisation (``to_json``) and validating
parser (``parse``), and every constant of the format beside them: names, versions,
encodings, kinds, the rendering settings a manifest may record.

The manifest is a JSON object. Its ``manifest_sha256`` is the SHA-256 of the *canonical*
serialization of every other key: compact, keys sorted, UTF-8, as orjson's
``OPT_SORT_KEYS`` writes and ``jq -cjS 'del(.manifest_sha256)'`` reproduces. Readers
check ``format`` and ``format_version`` first, then that checksum, then ``parse``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

import orjson

from . import jsonload
from .catalog import SchemaQualified
from .errors import VerificationFailed
from .fingerprint import combine
from .pgoutput import parse_lsn
from .plan import STEM_PATTERN
from .regular_files import read_regular

FORMAT_NAME = "asyncsnap"
# The version this asyncsnap writes; it reads every version from 1 up to it.
FORMAT_VERSION = 5  # the newest this version reads
INCREMENT_FORMAT_VERSION = 5  # written for incremental backups (dump --since) only
ENCRYPTED_FORMAT_VERSION = 4  # written for encrypted full backups
PLAIN_FORMAT_VERSION = 3  # written for the others, which every 0.5+ reader reads
MANIFEST_NAME = "manifest.json"
SUMS_NAME = "SHA256SUMS"
CHECKSUM_KEY = "manifest_sha256"

# Data files: where they are and how they are compressed.
Compression = Literal["zstd", "gzip", "none"]
COMPRESSIONS: tuple[Compression, ...] = ("zstd", "gzip", "none")
EXTENSIONS: dict[Compression, str] = {
    "zstd": ".ndjson.zst",
    "gzip": ".ndjson.gz",
    "none": ".ndjson",
}
PARTIAL_SUFFIX = ".partial"
DATA_DIR = "data"


def canonical_bytes(body: dict[str, Any]) -> bytes:
    """The bytes the manifest checksum is computed over (``body`` without the checksum)."""
    return orjson.dumps(
        {k: v for k, v in body.items() if k != CHECKSUM_KEY}, option=orjson.OPT_SORT_KEYS
    )


def serialize(body: dict[str, Any]) -> bytes:
    """The manifest file's bytes: ``body`` plus its checksum, indented for people."""
    sealed = {**body, CHECKSUM_KEY: checksum(body)}
    # The newline by orjson: appending it to the bytes would copy a manifest of ten
    # thousand tables (14 MB) once more.
    options = orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
    return orjson.dumps(sealed, option=options)


# Stands for the tables' entries in the body while the rest is serialized: PostgreSQL
# names cannot hold a NUL, and no other value of the manifest does.
_TABLES_HERE = "\x00tables\x00"
_TABLES_HERE_JSON = orjson.dumps(_TABLES_HERE)


def _write_spliced(
    write: Callable[[bytes], object],
    serialized: bytes,
    entries: Iterable[bytes],
    punctuation: tuple[bytes, bytes, bytes],
) -> None:
    """``serialized`` with the tables' placeholder replaced by ``entries`` in a list
    (``punctuation``: its opening, separator and closing), to ``write`` piece by piece:
    no piece is kept, and no copy of them all is made but the one written to."""
    before, found, after = serialized.partition(_TABLES_HERE_JSON)
    assert found and _TABLES_HERE_JSON not in after, "the tables' place, once"
    opening, separator, closing = punctuation
    write(before)
    first = True
    for entry in entries:
        write(opening if first else separator)
        write(entry)
        first = False
    write(b"[]" if first else closing)
    write(after)


def checksum(body: dict[str, Any]) -> str:
    """The SHA-256 of ``canonical_bytes(body)``, without those bytes of every table at
    once (80 MB for fifty thousand tables): each table's are hashed and let go. A body
    whose tables are not a list, or that holds the placeholder itself, is hashed whole."""
    tables = body.get("tables")
    if not isinstance(tables, list | jsonload.StreamedArray):
        return hashlib.sha256(canonical_bytes(body)).hexdigest()
    rest = canonical_bytes({**body, "tables": _TABLES_HERE})
    if rest.count(_TABLES_HERE_JSON) != 1:
        return hashlib.sha256(canonical_bytes(body)).hexdigest()
    digest = hashlib.sha256()
    _write_spliced(
        digest.update,
        rest,
        (orjson.dumps(t, option=orjson.OPT_SORT_KEYS) for t in tables),
        (b"[", b",", b"]"),
    )
    return digest.hexdigest()


def serialize_manifest(written: Manifest) -> bytes:
    """``serialize(written.to_json())``, byte for byte (``write_manifest`` into bytes)."""
    out = io.BytesIO()
    write_manifest(written, out.write)
    return out.getvalue()


def write_manifest(written: Manifest, write: Callable[[bytes], object]) -> None:
    """``serialize(written.to_json())``, byte for byte, handed to ``write`` a piece at a
    time, without holding every table's entry at once, as dicts or as bytes: each is
    serialized alone, hashed or written, and let go (for ten thousand tables the dicts and
    their bytes took some 50 MB at the dump's end; the finished bytes and their buffer's
    growth another 13 and 19 MB, when a local backup's file can take them as they come).
    orjson's output is the same for a value wherever it sits, but for the indentation of
    its lines, which contain no other newline (JSON escapes those)."""
    body = written.to_json(tables=False)
    body["tables"] = _TABLES_HERE
    digest = hashlib.sha256()
    _write_spliced(
        digest.update,
        canonical_bytes(body),
        (orjson.dumps(t.to_json(), option=orjson.OPT_SORT_KEYS) for t in written.tables),
        (b"[", b",", b"]"),
    )
    sealed = {**body, CHECKSUM_KEY: digest.hexdigest()}
    options = orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2
    _write_spliced(
        write,
        orjson.dumps(sealed, option=options | orjson.OPT_APPEND_NEWLINE),
        # An entry sits in the top level's "tables" list: two levels deep, four spaces.
        (
            orjson.dumps(t.to_json(), option=options).replace(b"\n", b"\n    ")
            for t in written.tables
        ),
        (b"[\n    ", b",\n    ", b"\n  ]"),
    )


def sha256sums(files: list[tuple[str, str]]) -> bytes:
    """``SHA256SUMS`` content for ``(relative path, sha256)`` pairs, as sha256sum writes it.

    Our file names are plain ASCII without backslashes or newlines, so no escaping is
    ever needed (GNU sha256sum's escaped form starts a line with a backslash).
    """
    return "".join(f"{digest}  {path}\n" for path, digest in files).encode()


def _backups_inside(directory: Path) -> list[Path]:
    """The backups (directories with a manifest) directly inside ``directory``, by name."""
    try:
        return sorted(p for p in directory.iterdir() if (p / MANIFEST_NAME).is_file())
    except OSError:
        return []


def load(backup_dir: Path, *, streamed: bool = False) -> dict[str, Any]:
    """Read and check a backup's manifest: format name, version, then checksum.

    Raises ``VerificationFailed`` naming what is wrong. A directory without a manifest is
    not a backup (an interrupted dump leaves at most a ``.partial`` directory).
    """
    path = backup_dir / MANIFEST_NAME
    try:
        raw = read_regular(path)
    except FileNotFoundError as exc:
        inside = _backups_inside(backup_dir)
        raise no_manifest(str(backup_dir), str(inside[-1]) if inside else None) from exc
    return load_bytes(raw, str(path), streamed=streamed)


def no_manifest(where: str, example: str | None) -> VerificationFailed:
    """A location without a manifest: not a backup (``example``: a backup inside it)."""
    return VerificationFailed(
        f"{where} has no {MANIFEST_NAME}: not a complete asyncsnap backup",
        hint=f"it holds backups (dump's -o): give one of them, e.g. {example}"
        if example
        else "a dump that failed, was interrupted or is still running leaves no manifest",
    )


def load_bytes(raw: bytes, path: str, *, streamed: bool = False) -> dict[str, Any]:
    """``load`` for a manifest's bytes read from ``path`` (a file or an object's URL).

    ``streamed``: its ``tables`` a ``jsonload.StreamedArray`` (read for the checksum,
    then again by ``parse``, an entry at a time), for a body only ``parse`` reads: ten
    thousand entries' dicts are then never held at once."""
    try:
        # orjson's answer, without its transient tree (jsonload)
        body = jsonload.loads_streaming(raw, "tables") if streamed else jsonload.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise VerificationFailed(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT_NAME:
        raise VerificationFailed(f"{path} is not an asyncsnap manifest")
    version = body.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise VerificationFailed(f"{path} has no valid format_version")
    if version > FORMAT_VERSION:
        raise VerificationFailed(
            f"{path} has format version {version}; this asyncsnap reads up to {FORMAT_VERSION}",
            hint="upgrade asyncsnap",
        )
    stated = body.get(CHECKSUM_KEY)
    if not isinstance(stated, str) or stated != checksum(body):
        raise VerificationFailed(
            f"{path} does not match its own checksum: it was edited or damaged"
        )
    return body


# Rendering settings fixed for every session, so output does not depend on the server's
# or the role's defaults. They are recorded in the manifest and reused by restore.
# extra_float_digits=3 gives shortest-exact floats on PostgreSQL 12+ and the exact
# 17-digit form on older servers; TimeZone=UTC makes timestamptz text independent of
# the server zone; IntervalStyle iso_8601 is what other languages parse.
RENDER_SETTINGS: Mapping[str, str] = {
    "client_encoding": "UTF8",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "iso_8601",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "xmloption": "content",  # how xml text is read back: fragments as well as documents
}


def checked_render_settings(settings: Mapping[str, str], *, source: str) -> dict[str, str]:
    """A backup's recorded ``settings``, if they are exactly the documented ones.

    A manifest's settings are applied to the restoring session, so they must never choose
    anything else (``session_replication_role = replica`` would switch off foreign-key
    checks, ``search_path`` would undo our policy). Keys may be missing (their documented
    value is used); an unknown key or another value refuses the backup.

    :raises VerificationFailed: on any key or value outside ``RENDER_SETTINGS``.
    """
    for key, value in settings.items():
        if RENDER_SETTINGS.get(key) != value:
            shown = f"{key} = {value!r}" if key in RENDER_SETTINGS else f"{key!r}"
            raise VerificationFailed(
                f"{source}: the manifest's settings name {shown}, which asyncsnap never writes",
                hint="the backup was altered or not made by asyncsnap; do not restore it",
            )
    return dict(RENDER_SETTINGS)


_MAX_COUNT = 2**63 - 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_ENCODINGS = ("json", "text", "array")
_KINDS = ("table", "partitioned", "partition")
_GENERATED = ("stored", "virtual")
_IDENTITY = ("always", "by default")
_TOOL_VERSION = re.compile(r"[0-9]{1,3}(\.[0-9]{1,4})?")
# Where a backup keeps its schema (``schema.py`` writes them; fixed, never from a manifest).
SCHEMA_DIR = "schema"
SCHEMA_ARCHIVE_PATH = "schema/schema.pgdump"  # pg_dump --format=custom --schema-only
SCHEMA_SQL_PATH = "schema/schema.sql"  # the same, rendered as plain SQL by pg_restore
# The first bytes of a pg_dump custom-format archive (verify checks them).
ARCHIVE_MAGIC = b"PGDMP"
# A dump's data files (docs/format.md, "Layout"): a table's stem (plan.file_stem), the
# large objects' file (largeobjects.LARGE_OBJECTS_STEM) or an increment's transactions
# (TRANSACTIONS_STEM), with a compression's extension.
_DATA_PATH = re.compile(
    rf"{DATA_DIR}/(?:large-objects|transactions|{STEM_PATTERN})"
    + "(?:"
    + "|".join(re.escape(ext) for ext in EXTENSIONS.values())
    + ")"
)


def written_by_dump(relpath: str) -> bool:
    """Whether a dump writes files named ``relpath`` (relative to the backup): the
    manifest, ``SHA256SUMS``, the two schema files and data files named by the format's
    rules. Retention removes these and nothing else (``prune``); the store's
    ``claim.json`` is the store's to add (``bucket``).

    >>> written_by_dump("data/public.orders-3b8f0c1d2e4a.0002.ndjson.zst")
    True
    >>> written_by_dump("data/notours.txt"), written_by_dump("manifest.json.bak")
    (False, False)
    """
    if relpath in (MANIFEST_NAME, SUMS_NAME, SCHEMA_ARCHIVE_PATH, SCHEMA_SQL_PATH):
        return True
    return _DATA_PATH.fullmatch(relpath) is not None


# The longest line a data file holds unless its manifest entry says more. The server
# renders each row as one text value, and no value can exceed 1 GiB - 1 byte
# (MaxAllocSize); a line is that plus its newline. A row too big for that is rendered
# column by column (``bigrows``) and its file's entry records the longest such line.
# Dump, verify and restore read through ``DataFileReader`` and so share this bound; a
# reader holds at most one line and one read block in memory at a time.
# The name a dump gives a backup without --name (UTC), and the names retention may
# remove: a backup named otherwise was named by someone, and --keep / prune leave it
# unless asked (prune --include-named).
DEFAULT_NAME_FORMAT = "backup_%Y%m%dT%H%M%SZ"
DEFAULT_NAME = re.compile(r"backup_[0-9]{8}T[0-9]{6}Z(-[0-9]{1,2})?")  # -2: same second

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


@dataclass(frozen=True, slots=True)
class BackupFile:
    path: str
    rows: int
    bytes: int
    stored_bytes: int
    sha256: str
    longest_line: int | None = None  # set when a row was longer than MAX_LINE_BYTES allows
    # [first, end) heap pages of a split table's file, end None for the last; None: whole
    pages: tuple[int, int | None] | None = None
    # the rows' fingerprint (``asyncsnap.fingerprint``); None in backups before 0.8.0
    fingerprint: str | None = None

    @property
    def line_limit(self) -> int:
        """The longest line a reader accepts in this file."""
        return max(MAX_LINE_BYTES, self.longest_line or 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": self.rows,
            "bytes": self.bytes,
            "stored_bytes": self.stored_bytes,
            "sha256": self.sha256,
            "pages": list(self.pages) if self.pages is not None else None,
            "longest_line": self.longest_line or None,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True, slots=True)
class BackupColumn:
    name: str
    type: str
    encoding: str
    not_null: bool
    generated: str | None
    identity: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "encoding": self.encoding,
            "not_null": self.not_null,
            "generated": self.generated,
            "identity": self.identity,
        }


@dataclass(frozen=True, slots=True)
class BackupForeignKey:
    """A foreign key of a table at dump time (the referenced table may not be dumped)."""

    name: str
    columns: tuple[str, ...]
    references: tuple[str, str]
    ref_columns: tuple[str, ...]
    deferrable: bool
    initially_deferred: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "columns": list(self.columns),
            "references": {
                "schema": self.references[0],
                "name": self.references[1],
                "columns": list(self.ref_columns),
            },
            "deferrable": self.deferrable,
            "initially_deferred": self.initially_deferred,
        }


def _ref(key: tuple[str, str] | None) -> dict[str, str] | None:
    return None if key is None else {"schema": key[0], "name": key[1]}


@dataclass(frozen=True, slots=True)
class BackupTable(SchemaQualified):
    schema: str
    name: str
    kind: str
    parent: tuple[str, str] | None
    rows: int
    columns: tuple[BackupColumn, ...]
    files: tuple[BackupFile, ...]
    row_security: bool = False  # holds only the rows the dumping role could see
    primary_key: tuple[str, ...] = ()
    foreign_keys: tuple[BackupForeignKey, ...] = ()

    @property
    def has_data(self) -> bool:
        return self.kind != "partitioned"

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of all the table's rows, if the dump recorded its files'."""
        if any(f.fingerprint is None for f in self.files):
            return None
        return combine(f.fingerprint for f in self.files if f.fingerprint is not None)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "name": self.name,
            "kind": self.kind,
            "parent": _ref(self.parent),
            "rows": self.rows,
            "row_security": self.row_security,
            "columns": [c.to_json() for c in self.columns],
            "primary_key": list(self.primary_key),
            "foreign_keys": [fk.to_json() for fk in self.foreign_keys],
            "files": [f.to_json() for f in self.files],
        }


@dataclass(frozen=True)
class BackupSequence(SchemaQualified):
    schema: str
    name: str
    table: tuple[str, str] | None  # None: a standalone sequence (format version 2)
    last_value: int
    is_called: bool
    column: str | None = None  # the owning or defaulting column of ``table``

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "name": self.name,
            "table": _ref(self.table),
            "column": self.column,
            "last_value": self.last_value,
            "is_called": self.is_called,
        }


@dataclass(frozen=True)
class BackupLargeObjects:
    """The large objects in a backup: how many, their bytes, and the files holding them."""

    objects: int
    bytes: int
    files: tuple[BackupFile, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "bytes": self.bytes,
            "files": [f.to_json() for f in self.files],
        }


# What a database's privileges can be (aclitem letters C, c, T), in pg_dump's order.
DATABASE_PRIVILEGES = ("CREATE", "CONNECT", "TEMPORARY")
LOCALE_PROVIDERS = ("libc", "icu", "builtin")


@dataclass(frozen=True)
class AclItem:
    """One item of a database's ACL: what ``grantor`` granted ``grantee`` (None:
    PUBLIC), and which of those privileges it may grant on."""

    grantee: str | None
    grantor: str
    privileges: tuple[str, ...]  # of DATABASE_PRIVILEGES, in that order
    grantable: tuple[str, ...] = ()  # of ``privileges``, those WITH GRANT OPTION

    def to_json(self) -> dict[str, Any]:
        return {
            "grantee": self.grantee,
            "grantor": self.grantor,
            "privileges": list(self.privileges),
            "grantable": list(self.grantable),
        }


@dataclass(frozen=True)
class RoleSettings:
    """``ALTER ROLE role IN DATABASE ... SET`` of the database: ``name=value`` entries
    as ``pg_db_role_setting.setconfig`` holds them."""

    role: str
    settings: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "settings": list(self.settings)}


@dataclass(frozen=True)
class DatabaseProperties:
    """The source database's own properties, read in the dump's snapshot: what
    ``pg_dump --create`` writes for a database (its CREATE DATABASE options besides the
    encoding and collation in ``server``, owner, ACL, comment, connection limit, template
    flag, settings, role settings), which ``restore --create`` gives the new database.
    The manifest's ``database`` key; absent before asyncsnap 0.9.0."""

    owner: str
    acl: tuple[AclItem, ...] | None  # None: the default privileges (datacl is null)
    comment: str | None
    connection_limit: int  # -1: no limit
    is_template: bool
    tablespace: str | None  # None: the server's default tablespace
    locale_provider: str  # one of LOCALE_PROVIDERS
    locale: str | None  # the ICU or builtin locale; None for libc
    icu_rules: str | None
    settings: tuple[str, ...]  # ALTER DATABASE ... SET, as setconfig holds them
    role_settings: tuple[RoleSettings, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "acl": None if self.acl is None else [a.to_json() for a in self.acl],
            "comment": self.comment,
            "connection_limit": self.connection_limit,
            "is_template": self.is_template,
            "tablespace": self.tablespace,
            "locale_provider": self.locale_provider,
            "locale": self.locale,
            "icu_rules": self.icu_rules,
            "settings": list(self.settings),
            "role_settings": [r.to_json() for r in self.role_settings],
        }


@dataclass(frozen=True)
class SchemaFile:
    """A schema file of the backup: stored as pg_dump or pg_restore wrote it."""

    path: str
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.bytes, "sha256": self.sha256}


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

    def to_json(self) -> dict[str, Any]:
        return {
            "pg_dump_version": self.pg_dump_version,
            "archive": self.archive.to_json(),
            "sql": self.sql.to_json(),
        }


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

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "schema": self.schema,
            "name": self.name,
            "reason": self.reason,
            "refresh": self.refresh,
        }

    def describe(self) -> str:
        """``materialized view public.totals: <reason>``, for people."""
        if self.schema is None or self.name is None:
            return f"{self.kind}: {self.reason}"
        return f"{self.kind} {self.qualified}: {self.reason}"


Ref = tuple[str, str]  # (schema, name)


def _ref_json(key: Ref) -> dict[str, str]:
    return {"schema": key[0], "name": key[1]}


@dataclass(frozen=True)
class ToolInfo:
    """``tool``: what wrote the backup."""

    name: str
    version: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}

    @classmethod
    def parse(cls, c: _Checker, raw: Any) -> ToolInfo | None:
        if raw is None:
            return None
        t = c.obj(raw, "tool")
        return cls(c.string(t.get("name"), "tool.name"), c.string(t.get("version"), "tool.version"))


@dataclass(frozen=True)
class SnapshotInfo:
    """``snapshot``: the exported snapshot every file was read in."""

    id: str
    taken_at: str  # ISO 8601, UTC, ``Z``

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "taken_at": self.taken_at}

    @classmethod
    def parse(cls, c: _Checker, raw: Any) -> SnapshotInfo | None:
        if raw is None:
            return None
        s = c.obj(raw, "snapshot")
        return cls(
            c.string(s.get("id"), "snapshot.id"), c.string(s.get("taken_at"), "snapshot.taken_at")
        )


# A replication slot's name: PostgreSQL's rule (lower-case letters, digits, _, at most 63).
SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
SLOT_PLUGIN = "pgoutput"
LSN = re.compile(r"[0-9A-F]{1,8}/[0-9A-F]{1,8}")  # as PostgreSQL writes one
SYSTEM_IDENTIFIER = re.compile(r"[0-9]{1,20}")


def is_publication_name(name: str) -> bool:
    """A name PostgreSQL can give a publication: 1 to 63 bytes (NAMEDATALEN - 1), no NUL."""
    return 0 < len(name.encode()) <= 63 and "\0" not in name


@dataclass(frozen=True)
class SlotInfo:
    """``slot``: the logical replication slot whose start is this backup's snapshot
    (``dump --slot``): where an incremental backup's changes begin. Absent otherwise."""

    name: str
    publication: str
    consistent_lsn: str  # X/Y, upper-case hexadecimal as the server writes it
    system_identifier: str  # the cluster's (IDENTIFY_SYSTEM), decimal
    plugin: str = SLOT_PLUGIN

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "plugin": self.plugin,
            "publication": self.publication,
            "consistent_lsn": self.consistent_lsn,
            "system_identifier": self.system_identifier,
        }

    @classmethod
    def parse(cls, c: _Checker, raw: Any) -> SlotInfo | None:
        if raw is None:
            return None
        s = c.obj(raw, "slot")

        def matching(key: str, pattern: re.Pattern[str], what: str) -> str:
            value: str = c.string(s.get(key), f"slot.{key}")
            if not pattern.fullmatch(value):
                raise c.fail(f"slot.{key}", f"is not {what}: {value!r}")
            return value

        publication: str = c.string(s.get("publication"), "slot.publication")
        if not is_publication_name(publication):
            raise c.fail("slot.publication", f"is not a publication name: {publication!r}")
        return cls(
            name=matching("name", SLOT_NAME, "a replication slot name"),
            plugin=c.choice(s.get("plugin"), "slot.plugin", (SLOT_PLUGIN,)),
            publication=publication,
            consistent_lsn=matching("consistent_lsn", LSN, "a WAL position (X/Y)"),
            system_identifier=matching(
                "system_identifier", SYSTEM_IDENTIFIER, "a system identifier"
            ),
        )


# An incremental backup's data files (docs/format.md, "Incremental backups"): every line
# of a table's change file has these keys, in this order; the transactions file's lines
# have TRANSACTION_KEYS.
CHANGE_KEYS = ("op", "lsn", "xid", "n", "key", "row", "unchanged")
CHANGE_OPS = ("insert", "update", "delete", "truncate")
TRANSACTION_KEYS = ("xid", "lsn", "end_lsn", "commit_time", "changes")
TRANSACTIONS_STEM = "transactions"  # data/transactions.ndjson.zst


@dataclass(frozen=True)
class IncrementInfo:
    """``increment``: what makes a backup incremental (``dump --since``): the backup it
    follows and the stretch of WAL whose committed transactions it holds. Absent in a
    full backup."""

    parent: str  # the parent backup's name (a sibling: same directory or store prefix)
    parent_manifest_sha256: str  # the parent's manifest checksum: which backup, exactly
    start_lsn: str  # the parent's end (its slot's consistent LSN, or its own end_lsn)
    end_lsn: str  # the end of the increment's last commit (its boundary's)
    transactions: int
    transactions_file: BackupFile | None  # None when no transaction changed a row

    def to_json(self) -> dict[str, Any]:
        return {
            "parent": {"name": self.parent, "manifest_sha256": self.parent_manifest_sha256},
            "start_lsn": self.start_lsn,
            "end_lsn": self.end_lsn,
            "transactions": self.transactions,
            "transactions_file": None
            if self.transactions_file is None
            else self.transactions_file.to_json(),
        }

    @classmethod
    def parse(cls, c: _Checker, files: _Files, raw: Any) -> IncrementInfo | None:
        if raw is None:
            return None
        i = c.obj(raw, "increment")
        parent = c.obj(i.get("parent"), "increment.parent")
        name: str = c.string(parent.get("name"), "increment.parent.name")
        if not is_backup_name(name):
            raise c.fail("increment.parent.name", f"is not a backup's name: {name!r}")
        digest: str = c.string(parent.get("manifest_sha256"), "increment.parent.manifest_sha256")
        if not _HEX64.fullmatch(digest):
            raise c.fail("increment.parent.manifest_sha256", "is not a SHA-256 hex digest")
        lsns = []
        for key in ("start_lsn", "end_lsn"):
            value: str = c.string(i.get(key), f"increment.{key}")
            if not LSN.fullmatch(value):
                raise c.fail(f"increment.{key}", f"is not a WAL position (X/Y): {value!r}")
            lsns.append(value)
        if parse_lsn(lsns[1]) < parse_lsn(lsns[0]):
            raise c.fail("increment.end_lsn", "is before its start_lsn")
        count = c.count(i.get("transactions"), "increment.transactions")
        raw_file = i.get("transactions_file")
        file = None if raw_file is None else files.one(raw_file, "increment.transactions_file")
        if (file.rows if file is not None else 0) != count:
            raise c.fail("increment.transactions", "is not its transactions file's lines")
        return cls(name, digest, lsns[0], lsns[1], count, file)


def is_backup_name(name: str) -> bool:
    """A name a backup can have (``dump --name``'s rule): one path component, not ``.`` or
    ``..``, without ``/``, ``\\``, control characters or the ``.partial`` suffix, at most
    200 bytes. A name read from a manifest chooses a path only if it passes.

    >>> is_backup_name("backup_20261205T010000Z"), is_backup_name("../x"), is_backup_name("..")
    (True, False, False)
    """
    return (
        0 < len(name.encode()) <= 200
        and name not in (".", "..")
        and not any(ch in "/\\" or unicodedata.category(ch) == "Cc" for ch in name)
        and not name.endswith(PARTIAL_SUFFIX)
    )


@dataclass(frozen=True)
class ServerInfo:
    """``server``: the source server and database. Fields a backup of an older asyncsnap
    does not have are None."""

    version: str | None
    version_num: int | None
    database: str | None
    host: str | None
    port: int | None
    user: str | None
    encoding: str | None
    lc_collate: str | None
    lc_ctype: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "version_num": self.version_num,
            "database": self.database,
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "encoding": self.encoding,
            "lc_collate": self.lc_collate,
            "lc_ctype": self.lc_ctype,
        }

    @classmethod
    def parse(cls, c: _Checker, raw: Any) -> ServerInfo | None:
        if raw is None:
            return None
        s = c.obj(raw, "server")

        def text(key: str) -> str | None:
            return c.string(s.get(key), f"server.{key}", allow_none=True)  # type: ignore[no-any-return]

        def number(key: str) -> int | None:
            return None if s.get(key) is None else c.integer(s.get(key), f"server.{key}")

        return cls(
            version=text("version"),
            version_num=number("version_num"),
            database=text("database"),
            host=text("host"),
            port=number("port"),
            user=text("user"),
            encoding=text("encoding"),
            lc_collate=text("lc_collate"),
            lc_ctype=text("lc_ctype"),
        )


@dataclass(frozen=True)
class RestoreOrderInfo:
    """``restore_order``: the foreign-key levels (parents first), the cycles among them and
    the tables that reference themselves."""

    levels: tuple[tuple[Ref, ...], ...]
    cycles: tuple[tuple[Ref, ...], ...]
    self_referencing: tuple[Ref, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "levels": [[_ref_json(k) for k in level] for level in self.levels],
            "cycles": [[_ref_json(k) for k in cycle] for cycle in self.cycles],
            "self_referencing": [_ref_json(k) for k in self.self_referencing],
        }

    @classmethod
    def parse(cls, c: _Checker, raw: Any) -> RestoreOrderInfo | None:
        if raw is None:
            return None
        o = c.obj(raw, "restore_order")

        def refs(value: Any, where: str) -> tuple[Ref, ...]:
            return tuple(c.ref(r, f"{where}[{i}]") for i, r in enumerate(c.lst(value, where)))

        def groups(key: str) -> tuple[tuple[Ref, ...], ...]:
            w = f"restore_order.{key}"
            return tuple(refs(g, f"{w}[{i}]") for i, g in enumerate(c.lst(o.get(key, []), w)))

        return cls(
            levels=groups("levels"),
            cycles=groups("cycles"),
            self_referencing=refs(o.get("self_referencing", []), "restore_order.self_referencing"),
        )


@dataclass(frozen=True)
class Totals:
    """``totals``: tables with data, data files, rows (large objects' lines not counted),
    NDJSON bytes and stored bytes."""

    tables: int
    files: int
    rows: int
    bytes: int
    stored_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "tables": self.tables,
            "files": self.files,
            "rows": self.rows,
            "bytes": self.bytes,
            "stored_bytes": self.stored_bytes,
        }

    @classmethod
    def parse(cls, c: _Checker, raw: Any) -> Totals | None:
        if raw is None:
            return None
        t = c.obj(raw, "totals")
        return cls(
            *(
                c.count(t.get(k), f"totals.{k}")
                for k in ("tables", "files", "rows", "bytes", "stored_bytes")
            )
        )


@dataclass(frozen=True)
class Manifest:
    """The manifest's top level, typed: what ``dump`` writes (``to_json``) and what every
    reader gets (``parse``). docs/format.md describes each field; the fields that older
    backups do not have are None (or empty)."""

    format_version: int
    compression: Compression
    settings: dict[str, str]
    tables: tuple[BackupTable, ...]
    sequences: tuple[BackupSequence, ...]
    skipped: tuple[Skipped, ...] = ()  # selected but not in the backup, with the reason
    large_objects: BackupLargeObjects | None = None
    schema: BackupSchema | None = None  # None: data only (--no-schema, or format < 3)
    encryption: tuple[str, ...] = ()  # age recipients the files are encrypted to (format 4)
    database: DatabaseProperties | None = None  # None: a backup made before 0.9.0
    tool: ToolInfo | None = None
    started_at: str | None = None
    finished_at: str | None = None
    snapshot: SnapshotInfo | None = None
    server: ServerInfo | None = None
    restore_order: RestoreOrderInfo | None = None
    totals: Totals | None = None
    slot: SlotInfo | None = None  # dump --slot's (and its increments'); absent otherwise
    increment: IncrementInfo | None = None  # dump --since's; absent in a full backup
    # The manifest's own checksum as read (an increment names its parent by it); not
    # part of the body written.
    checksum: str | None = field(default=None, compare=False)

    def to_json(self, *, tables: bool = True) -> dict[str, Any]:
        """The manifest's body (``serialize`` adds its checksum), keys in the order the
        format has always written them; without the tables' entries for
        ``serialize_manifest``."""

        def maybe(value: Any) -> Any:
            return None if value is None else value.to_json()

        encryption = {"encryption": {"method": "age", "recipients": list(self.encryption)}}
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            **(encryption if self.encryption else {}),
            "tool": maybe(self.tool),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "snapshot": maybe(self.snapshot),
            **({"slot": self.slot.to_json()} if self.slot is not None else {}),
            **({"increment": self.increment.to_json()} if self.increment is not None else {}),
            "server": maybe(self.server),
            "database": maybe(self.database),
            "settings": dict(self.settings),
            "compression": self.compression,
            "tables": [t.to_json() for t in self.tables] if tables else [],
            "sequences": [s.to_json() for s in self.sequences],
            "large_objects": maybe(self.large_objects),
            "schema": maybe(self.schema),
            "skipped": [s.to_json() for s in self.skipped],
            "restore_order": maybe(self.restore_order),
            "totals": maybe(self.totals),
        }

    @classmethod
    def parse(cls, body: dict[str, Any], c: _Checker, local: Path | None) -> Manifest:
        """Every field checked, in the order a reader's errors name them (``load``
        checked format, version and checksum already)."""
        version = body["format_version"]
        compression = c.choice(body.get("compression"), "compression", COMPRESSIONS)
        settings_raw = c.obj(body.get("settings"), "settings")
        settings = checked_render_settings(
            {
                c.string(k, "settings key"): c.string(v, f"settings.{k}")
                for k, v in settings_raw.items()
            },
            source=c.source,
        )
        files = _Files(c, local)
        tables: list[BackupTable] = []
        seen_tables: set[Ref] = set()
        raw_tables = body.get("tables")
        entries = (
            raw_tables
            if isinstance(raw_tables, jsonload.StreamedArray)
            else _let_go(c.lst(raw_tables, "tables"))
        )
        for i, raw in enumerate(entries):
            table = _table(c, files, raw, f"tables[{i}]")
            if table.key in seen_tables:
                raise c.fail(f"tables[{i}]", f"lists {table.qualified} twice")
            seen_tables.add(table.key)
            tables.append(table)
        sequences = c.lst(body.get("sequences"), "sequences")
        slot = SlotInfo.parse(c, body.get("slot"))
        increment = _increment(c, files, body, version, slot)
        # Absent in manifests written before asyncsnap 0.2: nothing was skipped.
        skipped = c.lst(body.get("skipped", []), "skipped")
        return cls(
            format_version=version,
            compression=compression,  # type: ignore[arg-type]
            settings=settings,
            tables=tuple(tables),
            sequences=tuple(
                _sequence(c, s, f"sequences[{i}]", version) for i, s in enumerate(sequences)
            ),
            skipped=tuple(_skipped(c, k, f"skipped[{i}]") for i, k in enumerate(skipped)),
            large_objects=_large_objects(c, files, body.get("large_objects")),
            schema=_schema(c, files, body.get("schema")),
            encryption=_encryption(c, body, version),
            database=None
            if body.get("database") is None
            else _database_properties(c, c.obj(body["database"], "database")),
            tool=ToolInfo.parse(c, body.get("tool")),
            started_at=c.string(body.get("started_at"), "started_at", allow_none=True),
            finished_at=c.string(body.get("finished_at"), "finished_at", allow_none=True),
            snapshot=SnapshotInfo.parse(c, body.get("snapshot")),
            slot=slot,
            increment=increment,
            checksum=body.get(CHECKSUM_KEY),
            server=ServerInfo.parse(c, body.get("server")),
            restore_order=RestoreOrderInfo.parse(c, body.get("restore_order")),
            totals=Totals.parse(c, body.get("totals")),
        )


def _increment(
    c: _Checker, files: _Files, body: dict[str, Any], version: int, slot: SlotInfo | None
) -> IncrementInfo | None:
    """An increment's entry, with what only an increment may (and must) be: version 5, a
    slot, no schema and no large objects."""
    if body.get("increment") is None:
        if version >= INCREMENT_FORMAT_VERSION:  # a full backup is never written as 5
            raise c.fail("increment", "is missing: version 5 is an increment's")
        return None
    if version < INCREMENT_FORMAT_VERSION:
        raise c.fail("increment", f"is not known in format version {version}")
    increment = IncrementInfo.parse(c, files, body.get("increment"))
    if slot is None:
        raise c.fail("slot", "is missing: an increment follows a slot")
    for key in ("schema", "large_objects", "snapshot", "database"):
        if body.get(key) is not None:
            raise c.fail(key, "is not empty: an increment holds rows' changes only")
    return increment


def _let_go(entries: list[Any]) -> Iterator[Any]:
    """``entries`` one by one, each let go once given: for ten thousand tables the parsed
    JSON and the typed entries would otherwise be held at once."""
    for i in range(len(entries)):
        entry, entries[i] = entries[i], None
        yield entry


class FileSource(Protocol):
    """Where a backup's files are read from (``storage.backup.StoreSource`` over any store).
    Paths are the manifest's."""

    where: str  # the backup's location, for messages

    def open(self, relpath: str) -> io.BufferedIOBase:
        """The stored bytes of ``relpath``, streamed; ``FileNotFoundError`` if missing."""
        ...

    def names(self, directory: str) -> list[str] | None:
        """The file names directly in ``directory`` (``data``, ``schema``), sorted; None
        when there is no such directory."""
        ...

    def local_file(self, relpath: str) -> Path | None:
        """``relpath`` as a local file a program can open and seek in, or None when the
        backup is not on this machine."""
        ...


@dataclass(frozen=True)
class Backup:
    """A backup whose manifest passed every check; files are checked when read."""

    path: Path | str  # a local directory, or the URL of a backup in an object store
    source: FileSource  # where its files are read from
    manifest: Manifest
    # age secret keys given to read it (--identity): never from the manifest, never shown
    identities: tuple[Any, ...] = field(default=(), repr=False)

    # The manifest's entries every reader uses, by their names.
    @property
    def compression(self) -> Compression:
        return self.manifest.compression

    @property
    def settings(self) -> dict[str, str]:
        return self.manifest.settings

    @property
    def tables(self) -> tuple[BackupTable, ...]:
        return self.manifest.tables

    @property
    def sequences(self) -> tuple[BackupSequence, ...]:
        return self.manifest.sequences

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        return self.manifest.skipped

    @property
    def large_objects(self) -> BackupLargeObjects | None:
        return self.manifest.large_objects

    @property
    def schema(self) -> BackupSchema | None:
        return self.manifest.schema

    @property
    def encryption(self) -> tuple[str, ...]:
        return self.manifest.encryption

    @property
    def database(self) -> DatabaseProperties | None:
        return self.manifest.database

    @property
    def increment(self) -> IncrementInfo | None:
        return self.manifest.increment

    def data_files(self) -> list[tuple[tuple[str, ...], BackupFile]]:
        """Every data file with the keys each of its lines must have, in order."""
        increment = self.manifest.increment
        if increment is not None:
            found: list[tuple[tuple[str, ...], BackupFile]]
            found = [(CHANGE_KEYS, f) for t in self.tables for f in t.files]
            if increment.transactions_file is not None:
                found.append((TRANSACTION_KEYS, increment.transactions_file))
            return found
        found = [(tuple(c.name for c in t.columns), f) for t in self.tables for f in t.files]
        if self.large_objects is not None:
            found += [(LARGE_OBJECT_KEYS, f) for f in self.large_objects.files]
        return found


class _Checker:
    """Walks the manifest and reports the first field of the wrong type, by its path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._strings: dict[str, str] = {}

    def shared(self, value: str) -> str:
        """One object for every string spelled the same: ten thousand tables' columns are
        mostly "id", "integer", "json", and the parser makes each occurrence anew (6 MB
        of the 10,000-table manifest's objects)."""
        return self._strings.setdefault(value, value)

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


def safe_relative_path(
    root: Path | None,
    relpath: str,
    checker: _Checker,
    where: str,
    checked_dirs: set[str] | None = None,
) -> None:
    """Refuse paths that could leave the backup: absolute, ``..``, backslashes, symlinks
    (``root`` None: an object store's keys, where only the name's form matters).

    ``checked_dirs``: the directories (relative to ``root``) already found to be no
    symlink and inside it, kept by the caller across one manifest's paths: its thousands
    of files share two directories, and resolving each file's whole path took a 3,000-table
    manifest's reading from 0.2 to 0.4 s."""
    pure = PurePosixPath(relpath)
    if (
        not relpath
        or pure.is_absolute()
        or "\\" in relpath
        or any(part in ("..", ".", "") for part in relpath.split("/"))
    ):
        raise checker.fail(where, f"has an unsafe path {relpath!r}")
    if root is None:
        return
    directory = pure.parent.as_posix()  # "." for a file at the top
    if checked_dirs is None or directory not in checked_dirs:
        current = root
        for part in pure.parent.parts:
            current = current / part
            if current.is_symlink():
                raise checker.fail(where, f"path {relpath!r} goes through a symlink")
        resolved_root = str(root.resolve())
        resolved = str((root / directory).resolve())
        if resolved != resolved_root and not resolved.startswith(resolved_root + os.sep):
            raise checker.fail(where, f"path {relpath!r} leaves the backup directory")
        if checked_dirs is not None:
            checked_dirs.add(directory)
    # The file itself, not a symlink, is then where its name says: in that directory.
    if (root / relpath).is_symlink():
        raise checker.fail(where, f"path {relpath!r} goes through a symlink")


def parse(root: Path | str, body: dict[str, Any], source: FileSource) -> Backup:
    """Check a loaded manifest (``load``) field by field and return it typed. ``body``'s
    table entries are let go as they are read: it is not for use afterwards.

    Every field's type and range, every path (relative, no ``..``, no symlink, inside
    ``root``; the schema files' fixed names), the sums that must agree.

    :raises VerificationFailed: naming the first field a reader must not trust.
    """
    local = root if isinstance(root, Path) else None
    manifest_where = str(local / MANIFEST_NAME) if local else f"{root}/{MANIFEST_NAME}"
    return Backup(
        path=root, source=source, manifest=Manifest.parse(body, _Checker(manifest_where), local)
    )


class _Files:
    """Reads the file entries of one manifest: each path safe and listed once."""

    def __init__(self, c: _Checker, local: Path | None) -> None:
        self.c = c
        self.local = local
        self.seen: set[str] = set()
        self.checked_dirs: set[str] = set()  # ``safe_relative_path``'s

    def read(self, raw: Any, where: str) -> tuple[BackupFile, ...]:
        return tuple(
            self.one(f_raw, f"{where}[{j}]") for j, f_raw in enumerate(self.c.lst(raw, where))
        )

    def one(self, raw: Any, fw: str) -> BackupFile:
        c = self.c
        f = c.obj(raw, fw)
        relpath = c.string(f.get("path"), f"{fw}.path")
        safe_relative_path(self.local, relpath, c, f"{fw}.path", self.checked_dirs)
        if relpath in self.seen:
            raise c.fail(f"{fw}.path", f"{relpath!r} is listed twice")
        self.seen.add(relpath)
        digest = c.string(f.get("sha256"), f"{fw}.sha256")
        if not _HEX64.fullmatch(digest):
            raise c.fail(f"{fw}.sha256", "is not a SHA-256 hex digest")
        fingerprint = c.string(f.get("fingerprint"), f"{fw}.fingerprint", allow_none=True)
        if fingerprint is not None and not _HEX32.fullmatch(fingerprint):
            raise c.fail(f"{fw}.fingerprint", "is not 32 lowercase hex digits")
        return BackupFile(
            path=relpath,
            rows=c.count(f.get("rows"), f"{fw}.rows"),
            bytes=c.count(f.get("bytes"), f"{fw}.bytes"),
            stored_bytes=c.count(f.get("stored_bytes"), f"{fw}.stored_bytes"),
            sha256=digest,
            longest_line=None
            if f.get("longest_line") is None
            else c.count(f.get("longest_line"), f"{fw}.longest_line"),
            pages=_pages(c, f.get("pages"), f"{fw}.pages"),
            fingerprint=fingerprint,
        )

    def schema_file(self, sc: dict[str, Any], key: str, expected: str) -> SchemaFile:
        c = self.c
        w = f"schema.{key}"
        f = c.obj(sc.get(key), w)
        # The names are fixed: a manifest cannot point restore at another file.
        if f.get("path") != expected:
            raise c.fail(f"{w}.path", f"is not {expected!r}")
        safe_relative_path(self.local, expected, c, f"{w}.path", self.checked_dirs)
        digest = c.string(f.get("sha256"), f"{w}.sha256")
        if not _HEX64.fullmatch(digest):
            raise c.fail(f"{w}.sha256", "is not a SHA-256 hex digest")
        self.seen.add(expected)
        return SchemaFile(path=expected, bytes=c.count(f.get("bytes"), f"{w}.bytes"), sha256=digest)


def _pages(c: _Checker, raw: Any, where: str) -> tuple[int, int | None] | None:
    if raw is None:
        return None
    pair = c.lst(raw, where)
    if len(pair) != 2:
        raise c.fail(where, "is not [first, end]")
    end = None if pair[1] is None else c.count(pair[1], f"{where}[1]")
    return (c.count(pair[0], f"{where}[0]"), end)


def _names(c: _Checker, raw: Any, where: str) -> tuple[str, ...]:
    return tuple(c.string(n, f"{where}[{k}]") for k, n in enumerate(c.lst(raw, where)))


def _foreign_key(c: _Checker, raw: Any, fw: str) -> BackupForeignKey:
    fk = c.obj(raw, fw)
    ref = c.obj(fk.get("references"), f"{fw}.references")
    return BackupForeignKey(
        name=c.string(fk.get("name"), f"{fw}.name"),
        columns=_names(c, fk.get("columns"), f"{fw}.columns"),
        references=c.ref(ref, f"{fw}.references"),
        ref_columns=_names(c, ref.get("columns"), f"{fw}.references.columns"),
        deferrable=c.boolean(fk.get("deferrable"), f"{fw}.deferrable"),
        initially_deferred=c.boolean(fk.get("initially_deferred"), f"{fw}.initially_deferred"),
    )


def _column(c: _Checker, raw: Any, cw: str) -> BackupColumn:
    col = c.obj(raw, cw)
    generated = col.get("generated")
    identity = col.get("identity")
    return BackupColumn(
        name=c.shared(c.string(col.get("name"), f"{cw}.name")),
        type=c.shared(c.string(col.get("type"), f"{cw}.type")),
        encoding=c.shared(c.choice(col.get("encoding"), f"{cw}.encoding", _ENCODINGS)),
        not_null=c.boolean(col.get("not_null"), f"{cw}.not_null"),
        generated=None if generated is None else c.choice(generated, f"{cw}.generated", _GENERATED),
        identity=None if identity is None else c.choice(identity, f"{cw}.identity", _IDENTITY),
    )


def _table(c: _Checker, files: _Files, raw: Any, w: str) -> BackupTable:
    t = c.obj(raw, w)
    columns = tuple(
        _column(c, col, f"{w}.columns[{j}]")
        for j, col in enumerate(c.lst(t.get("columns"), f"{w}.columns"))
    )
    if len({col.name for col in columns}) != len(columns):
        raise c.fail(f"{w}.columns", "has duplicate names")
    table_files = files.read(t.get("files"), f"{w}.files")
    parent = None if t.get("parent") is None else c.ref(t.get("parent"), f"{w}.parent")
    fks = c.lst(t.get("foreign_keys", []), f"{w}.foreign_keys")
    table = BackupTable(
        schema=c.shared(c.string(t.get("schema"), f"{w}.schema")),
        name=c.string(t.get("name"), f"{w}.name"),
        kind=c.choice(t.get("kind"), f"{w}.kind", _KINDS),
        parent=parent,
        rows=c.count(t.get("rows"), f"{w}.rows"),
        columns=columns,
        files=table_files,
        # Absent before format version 2: nothing was read under row security.
        row_security=c.boolean(t.get("row_security", False), f"{w}.row_security"),
        primary_key=_names(c, t.get("primary_key", []), f"{w}.primary_key"),
        foreign_keys=tuple(
            _foreign_key(c, fk, f"{w}.foreign_keys[{k}]") for k, fk in enumerate(fks)
        ),
    )
    if table.rows != sum(f.rows for f in table_files):
        raise c.fail(f"{w}.rows", "is not the sum of its files' rows")
    return table


def _sequence(c: _Checker, raw: Any, w: str, version: int) -> BackupSequence:
    s = c.obj(raw, w)
    owner_raw = s.get("table")
    if owner_raw is None and version < 2:
        raise c.fail(f"{w}.table", "is not an object")  # version 1 always names one
    return BackupSequence(
        schema=c.string(s.get("schema"), f"{w}.schema"),
        name=c.string(s.get("name"), f"{w}.name"),
        table=None if owner_raw is None else c.ref(owner_raw, f"{w}.table"),
        last_value=c.integer(s.get("last_value"), f"{w}.last_value"),
        is_called=c.boolean(s.get("is_called"), f"{w}.is_called"),
        column=c.string(s.get("column"), f"{w}.column", allow_none=True),
    )


def _skipped(c: _Checker, raw: Any, w: str) -> Skipped:
    k = c.obj(raw, w)
    kind = c.choice(k.get("kind"), f"{w}.kind", SKIP_KINDS)
    nameless = kind == "large objects"
    return Skipped(
        kind=kind,
        schema=c.string(k.get("schema"), f"{w}.schema", allow_none=nameless),
        name=c.string(k.get("name"), f"{w}.name", allow_none=nameless),
        reason=c.string(k.get("reason"), f"{w}.reason"),
        refresh=c.boolean(k.get("refresh", False), f"{w}.refresh"),
    )


def _large_objects(c: _Checker, files: _Files, raw: Any) -> BackupLargeObjects | None:
    if raw is None:
        return None
    lo = c.obj(raw, "large_objects")
    return BackupLargeObjects(
        objects=c.count(lo.get("objects"), "large_objects.objects"),
        bytes=c.count(lo.get("bytes"), "large_objects.bytes"),
        files=files.read(lo.get("files"), "large_objects.files"),
    )


def _schema(c: _Checker, files: _Files, raw: Any) -> BackupSchema | None:
    if raw is None:
        return None
    sc = c.obj(raw, "schema")
    version_text = c.string(sc.get("pg_dump_version"), "schema.pg_dump_version")
    if not _TOOL_VERSION.fullmatch(version_text):
        raise c.fail("schema.pg_dump_version", "is not a PostgreSQL version")
    return BackupSchema(
        pg_dump_version=version_text,
        archive=files.schema_file(sc, "archive", SCHEMA_ARCHIVE_PATH),
        sql=files.schema_file(sc, "sql", SCHEMA_SQL_PATH),
    )


def _encryption(c: _Checker, body: dict[str, Any], version: int) -> tuple[str, ...]:
    if version < ENCRYPTED_FORMAT_VERSION:
        return ()
    if version >= INCREMENT_FORMAT_VERSION and body.get("encryption") is None:
        return ()  # version 5 (increments) says it when it is encrypted; 4 always is
    enc = c.obj(body.get("encryption"), "encryption")
    if enc.get("method") != "age":
        raise c.fail("encryption.method", "is not age")
    recipients = _names(c, enc.get("recipients"), "encryption.recipients")
    if not recipients or not all(r.startswith("age1") for r in recipients):
        raise c.fail("encryption.recipients", "are not age public keys")
    return recipients


def _database_properties(c: _Checker, d: dict[str, Any]) -> DatabaseProperties:
    """The manifest's ``database`` entry, every field checked (its names and settings
    reach SQL only quoted, as identifiers or literals: restore_database)."""

    def texts(raw: Any, where: str) -> tuple[str, ...]:
        return tuple(c.string(v, f"{where}[{i}]") for i, v in enumerate(c.lst(raw, where)))

    acl = None
    if d.get("acl") is not None:
        items = []
        for i, raw in enumerate(c.lst(d.get("acl"), "database.acl")):
            w = f"database.acl[{i}]"
            item = c.obj(raw, w)
            privileges = texts(item.get("privileges"), f"{w}.privileges")
            grantable = texts(item.get("grantable", []), f"{w}.grantable")
            if not set(privileges) <= set(DATABASE_PRIVILEGES) or not privileges:
                raise c.fail(f"{w}.privileges", f"are not of {', '.join(DATABASE_PRIVILEGES)}")
            if not set(grantable) <= set(privileges):
                raise c.fail(f"{w}.grantable", "are not among its privileges")
            items.append(
                AclItem(
                    grantee=c.string(item.get("grantee"), f"{w}.grantee", allow_none=True),
                    grantor=c.string(item.get("grantor"), f"{w}.grantor"),
                    privileges=tuple(p for p in DATABASE_PRIVILEGES if p in privileges),
                    grantable=tuple(p for p in DATABASE_PRIVILEGES if p in grantable),
                )
            )
        acl = tuple(items)
    roles = []
    for i, raw in enumerate(c.lst(d.get("role_settings", []), "database.role_settings")):
        w = f"database.role_settings[{i}]"
        item = c.obj(raw, w)
        roles.append(
            RoleSettings(
                role=c.string(item.get("role"), f"{w}.role"),
                settings=texts(item.get("settings"), f"{w}.settings"),
            )
        )
    return DatabaseProperties(
        owner=c.string(d.get("owner"), "database.owner"),
        acl=acl,
        comment=c.string(d.get("comment"), "database.comment", allow_none=True),
        connection_limit=c.integer(d.get("connection_limit"), "database.connection_limit"),
        is_template=c.boolean(d.get("is_template"), "database.is_template"),
        tablespace=c.string(d.get("tablespace"), "database.tablespace", allow_none=True),
        locale_provider=c.choice(
            d.get("locale_provider"), "database.locale_provider", LOCALE_PROVIDERS
        ),
        locale=c.string(d.get("locale"), "database.locale", allow_none=True),
        icu_rules=c.string(d.get("icu_rules"), "database.icu_rules", allow_none=True),
        settings=texts(d.get("settings", []), "database.settings"),
        role_settings=tuple(roles),
    )
