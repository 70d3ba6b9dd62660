"""PostgreSQL's logical replication messages (the ``pgoutput`` plugin, protocol version 1),
decoded into values: what an incremental backup reads from its slot.

The server is treated as possibly hostile: every length is checked against the message,
a message is read to its last byte or refused, and nothing here trusts a count to size
memory before the bytes are there. Column values stay the bytes the server sent, in the
type's text output form (the decoding session's settings apply, as for COPY text), so
they go through the same converters as a full backup's rows.

Protocol: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
(version 1 without streaming or two-phase: asyncsnap never asks for those).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from . import _rows

# A column value a row message left out because it is TOASTed and did not change: the
# server did not send it, so it must never be written as null.
UNCHANGED: Final = "unchanged"

Value = bytes | None | str  # the bytes of the text form, SQL NULL, or UNCHANGED

_U8 = struct.Struct("!B")
_I16 = struct.Struct("!h")
_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")
_U64 = struct.Struct("!Q")
_I64 = struct.Struct("!q")


class MalformedMessage(ValueError):
    """A message that does not follow the protocol (cut short, a bad tag, bytes left over)."""


def format_lsn(lsn: int) -> str:
    """PostgreSQL's text form of a WAL position.

    >>> format_lsn(0x16B3748), format_lsn((1 << 32) + 5)
    ('0/16B3748', '1/5')
    """
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """A WAL position from its text form (``X/Y``, hexadecimal, each at most 32 bits).

    >>> parse_lsn("0/16B3748"), parse_lsn("1/5")
    (23803720, 4294967301)
    """
    high, sep, low = text.partition("/")
    if not sep or not _is_hex32(high) or not _is_hex32(low):
        raise ValueError(f"not a WAL position: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def _is_hex32(part: str) -> bool:
    return 0 < len(part) <= 8 and all(c in "0123456789abcdefABCDEF" for c in part)


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int  # the commit's LSN
    commit_time: int  # microseconds since 2000-01-01 UTC
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_time: int


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    name: str
    type_oid: int
    type_modifier: int
    key: bool  # part of the replica identity


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    schema: str
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int
    schema: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation: int
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Update:
    relation: int
    # The old row's key ('K', when the key changed) or the whole old row ('O', replica
    # identity full); None when the server sent neither (the key did not change).
    old: tuple[Value, ...] | None
    old_is_key: bool
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    relation: int
    old: tuple[Value, ...]
    old_is_key: bool


@dataclass(frozen=True, slots=True)
class Truncate:
    relations: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeInfo
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
)


class _Reader:
    """A cursor over one message's bytes; every read is bounds-checked."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, unpacker: struct.Struct) -> int:
        end = self.pos + unpacker.size
        if end > len(self.data):
            raise MalformedMessage(f"cut short at byte {self.pos}")
        (value,) = unpacker.unpack_from(self.data, self.pos)
        self.pos = end
        return int(value)

    def u8(self) -> int:
        return self._take(_U8)

    def i16(self) -> int:
        return self._take(_I16)

    def u32(self) -> int:
        return self._take(_U32)

    def i32(self) -> int:
        return self._take(_I32)

    def u64(self) -> int:
        return self._take(_U64)

    def i64(self) -> int:
        return self._take(_I64)

    def tag(self) -> str:
        return chr(self.u8())

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise MalformedMessage(f"unterminated string at byte {self.pos}")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage(f"a name that is not UTF-8 at byte {self.pos}") from exc

    def raw(self, length: int) -> bytes:
        if length < 0 or self.pos + length > len(self.data):
            raise MalformedMessage(f"a value of {length} bytes past the message's end")
        value = self.data[self.pos : self.pos + length]
        self.pos += length
        return value

    def end(self, what: str) -> None:
        if self.pos != len(self.data):
            raise MalformedMessage(f"{len(self.data) - self.pos} bytes after a {what} message")


def _tuple_data(data: bytes, pos: int) -> tuple[tuple[Value, ...], int]:
    """A row's values from ``pos``, and where they end (natively: the hot loop of
    decoding, a pass per row change)."""
    try:
        return _rows.pgoutput_values(data, pos, UNCHANGED)  # type: ignore[return-value]
    except ValueError as exc:
        raise MalformedMessage(str(exc)) from None


_RELATION_AND_KIND = struct.Struct("!IB")


def _row_change(data: bytes) -> Insert | Update | Delete:
    """An insert, update or delete (``data[0]`` is I, U or D): the messages of every row
    changed, read without a ``_Reader`` (a third of decoding's time went to its calls)."""
    if len(data) < 6:
        raise MalformedMessage(f"cut short at byte {len(data)}")
    tag = data[0]
    relation, kind = _RELATION_AND_KIND.unpack_from(data, 1)
    message: Insert | Update | Delete
    if tag == 0x49:  # 'I'
        if kind != 0x4E:
            raise MalformedMessage("an insert without its new row")
        new, pos = _tuple_data(data, 6)
        message = Insert(relation=relation, new=new)
    elif tag == 0x55:  # 'U'
        old: tuple[Value, ...] | None = None
        pos = 6
        if kind in (0x4B, 0x4F):  # 'K', 'O'
            old, pos = _tuple_data(data, pos)
            if pos >= len(data):
                raise MalformedMessage(f"cut short at byte {pos}")
            new_kind = data[pos]
            pos += 1
        else:
            new_kind = kind
        if new_kind != 0x4E:
            raise MalformedMessage(f"an update whose new row is of kind {chr(new_kind)!r}")
        new, pos = _tuple_data(data, pos)
        message = Update(relation=relation, old=old, old_is_key=kind == 0x4B, new=new)
    else:  # 'D'
        if kind not in (0x4B, 0x4F):
            raise MalformedMessage(f"a delete whose old row is of kind {chr(kind)!r}")
        old_row, pos = _tuple_data(data, 6)
        message = Delete(relation=relation, old=old_row, old_is_key=kind == 0x4B)
    if pos != len(data):
        raise MalformedMessage(f"{len(data) - pos} bytes after a {type(message).__name__} message")
    return message


def decode(data: bytes) -> Message:
    """One pgoutput message (as ``pg_logical_slot_peek_binary_changes`` returns it).

    :raises MalformedMessage: when it does not follow protocol version 1.
    """
    if data[:1] in (b"I", b"U", b"D"):
        return _row_change(data)
    r = _Reader(data)
    tag = r.tag()
    message: Message
    if tag == "B":
        message = Begin(final_lsn=r.u64(), commit_time=r.i64(), xid=r.u32())
    elif tag == "C":
        r.u8()  # flags, unused
        message = Commit(commit_lsn=r.u64(), end_lsn=r.u64(), commit_time=r.i64())
    elif tag == "O":
        message = Origin(lsn=r.u64(), name=r.cstring())
    elif tag == "R":
        message = _relation(r)
    elif tag == "Y":
        message = TypeInfo(oid=r.u32(), schema=r.cstring(), name=r.cstring())
    elif tag == "T":
        count = r.u32()
        options = r.u8()
        if count > (len(data) - r.pos) // 4:
            raise MalformedMessage(f"a truncate of {count} relations in a short message")
        relations = tuple(r.u32() for _ in range(count))
        message = Truncate(
            relations=relations, cascade=bool(options & 1), restart_identity=bool(options & 2)
        )
    elif tag == "M":
        flags = r.u8()
        lsn = r.u64()
        prefix = r.cstring()
        content = r.raw(r.u32())
        message = LogicalMessage(
            transactional=bool(flags & 1), lsn=lsn, prefix=prefix, content=content
        )
    else:
        raise MalformedMessage(f"unknown message tag {tag!r}")
    r.end(type(message).__name__)
    return message


def _relation(r: _Reader) -> Relation:
    oid = r.u32()
    schema = r.cstring() or "pg_catalog"  # the server sends "" for pg_catalog
    name = r.cstring()
    identity = r.tag()
    if identity not in ("d", "n", "f", "i"):
        raise MalformedMessage(f"replica identity {identity!r}")
    count = r.i16()
    if count < 0:
        raise MalformedMessage(f"a relation of {count} columns")
    columns = []
    for _ in range(count):
        flags = r.u8()
        columns.append(
            RelationColumn(
                name=r.cstring(), type_oid=r.u32(), type_modifier=r.i32(), key=bool(flags & 1)
            )
        )
    return Relation(
        oid=oid, schema=schema, name=name, replica_identity=identity, columns=tuple(columns)
    )
