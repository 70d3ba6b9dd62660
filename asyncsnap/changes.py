"""The committed changes a logical replication slot holds after a position: what an
incremental backup is made of (issue 25).

The slot is read with the server's SQL interface (``pg_logical_slot_peek_binary_changes``,
pgoutput protocol 1), which never consumes it: the slot moves only when the caller says so
(``advance``), after what it read is safely stored, so a reader killed midway reads the
same again. Rows arrive through a cursor, a batch at a time, never all at once.

Which transactions belong to a stretch of WAL, exactly
------------------------------------------------------
A transaction is placed by its commit record's LSN (pgoutput's ``commit_lsn``, the start
of the record). A backup made with ``dump --slot`` holds every transaction whose commit
LSN is before the slot's consistent point, and none after; from there, each read covers the
transactions whose commit LSN is at or after ``start`` and ends at the end of the last
commit it returns (``ChangeSet.end``): every transaction committed before that point was
decoded before it (the server decodes in commit order), and the next read starts there.
Decoding sees flushed WAL only, and a commit record that is not wholly flushed is not
decoded yet: its LSN is past the last complete one, so the next read has it. Advancing the
slot to ``end`` makes the server skip, from then on, exactly the transactions a read
covered (it skips commits whose record starts before the slot's position).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Literal

import asyncpg

from .pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    Truncate,
    TypeInfo,
    Update,
    Value,
    decode,
    format_lsn,
)

# Rows of the decoding function fetched at a time (each one message).
FETCH_BATCH = 1000
# The prefix of the logical decoding messages asyncsnap emits (``emit_mark``).
MARK_PREFIX = "asyncsnap"


class ChangesUnreadable(Exception):
    """The slot's messages do not add up (a change outside a transaction, a relation never
    described, a message that does not follow the protocol): nothing read can be used."""


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row's insert, update or delete, in the relation as it was described then."""

    kind: Literal["insert", "update", "delete"]
    relation: Relation
    # The old row's key columns (replica identity), or the whole old row (FULL); None for
    # an insert, and for an update that did not change the key.
    old: tuple[Value, ...] | None
    old_is_key: bool
    new: tuple[Value, ...] | None  # None for a delete


@dataclass(frozen=True, slots=True)
class TruncateChange:
    relations: tuple[Relation, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class Transaction:
    xid: int
    commit_lsn: int
    end_lsn: int
    commit_time: int  # microseconds since 2000-01-01 UTC
    changes: tuple[RowChange | TruncateChange, ...]
    # The contents of the transactional messages with prefix MARK_PREFIX it emitted
    # (read only with ``marks=True``): how an increment finds its own boundary.
    marks: tuple[bytes, ...] = ()


@dataclass
class ChangeSet:
    """What one read covered: the transactions from ``start`` up to ``end``."""

    start: int
    end: int
    transactions: list[Transaction] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TransactionStart:
    """A transaction's first message in a stream (``stream_batches``): its changes follow."""

    xid: int
    commit_lsn: int


@dataclass(frozen=True, slots=True)
class TransactionEnd:
    """A transaction's commit in a stream, after its changes."""

    xid: int
    commit_lsn: int
    end_lsn: int
    commit_time: int  # microseconds since 2000-01-01 UTC
    changes: int
    marks: tuple[bytes, ...]  # as ``Transaction.marks``


StreamItem = TransactionStart | RowChange | TruncateChange | TransactionEnd


_ROW_CHANGES = (Insert, Update, Delete)


class _Assembler:
    """Messages in, a transaction's start, its changes and its end out, each as it comes
    (a transaction of millions of rows is never held); checks that they add up, and
    leaves out the transactions committed before ``start``."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.relations: dict[int, Relation] = {}
        self.begin: Begin | None = None
        self.skipping = False  # the transaction begun was covered by an earlier read
        self.changes = 0
        self.marks: list[bytes] = []

    def feed(self, message: Message) -> StreamItem | None:
        if type(message) in _ROW_CHANGES and self.begin is not None:
            # The most of any stream, asked first (then every other kind in turn)
            change = self._change(message)
            if self.skipping:
                return None
            self.changes += 1
            return change
        if isinstance(message, Relation):
            self.relations[message.oid] = message
        elif isinstance(message, LogicalMessage):
            if message.transactional and message.prefix == MARK_PREFIX:
                if self.begin is None:
                    raise ChangesUnreadable("a transactional message outside a transaction")
                self.marks.append(message.content)
        elif isinstance(message, (TypeInfo, Origin)):
            pass  # types are named by the backup's columns; origins unused
        elif isinstance(message, Begin):
            if self.begin is not None:
                raise ChangesUnreadable("a transaction began inside another")
            self.begin, self.changes, self.marks = message, 0, []
            # Covered by an earlier read (the slot was not advanced after it)?
            self.skipping = message.final_lsn < self.start
            if not self.skipping:
                return TransactionStart(message.xid, message.final_lsn)
        elif isinstance(message, Commit):
            return self._commit(message)
        elif self.begin is None:
            raise ChangesUnreadable(f"a {type(message).__name__} outside a transaction")
        else:
            change = self._change(message)
            if not self.skipping:
                # One change a row, and a TRUNCATE one a table it names (the lines of
                # an increment are counted so)
                self.changes += len(change.relations) if isinstance(change, TruncateChange) else 1
                return change
        return None

    def _change(self, message: Message) -> RowChange | TruncateChange:
        if isinstance(message, Update):  # (the most common kind first)
            return RowChange(
                "update",
                self._relation(message.relation),
                message.old,
                message.old_is_key,
                message.new,
            )
        if isinstance(message, Insert):
            return RowChange("insert", self._relation(message.relation), None, False, message.new)
        if isinstance(message, Delete):
            return RowChange(
                "delete", self._relation(message.relation), message.old, message.old_is_key, None
            )
        if isinstance(message, Truncate):
            return TruncateChange(
                tuple(self._relation(r) for r in message.relations),
                message.cascade,
                message.restart_identity,
            )
        raise ChangesUnreadable(f"an unexpected {type(message).__name__} in a transaction")

    def _relation(self, oid: int) -> Relation:
        try:
            return self.relations[oid]
        except KeyError:
            raise ChangesUnreadable(f"a change of relation {oid}, never described") from None

    def _commit(self, commit: Commit) -> TransactionEnd | None:
        begin, self.begin = self.begin, None
        if begin is None:
            raise ChangesUnreadable("a commit without its transaction")
        if commit.commit_lsn != begin.final_lsn:
            raise ChangesUnreadable(
                f"a transaction committed at {format_lsn(commit.commit_lsn)}, announced at "
                f"{format_lsn(begin.final_lsn)}"
            )
        if self.skipping:
            return None
        return TransactionEnd(
            xid=begin.xid,
            commit_lsn=commit.commit_lsn,
            end_lsn=commit.end_lsn,
            commit_time=commit.commit_time,
            changes=self.changes,
            marks=tuple(self.marks),
        )

    def finish(self) -> None:
        if self.begin is not None:
            raise ChangesUnreadable("the changes ended inside a transaction")


async def read_changes(
    conn: asyncpg.Connection,
    slot: str,
    publication: str,
    start: int,
    upto: int | None = None,
) -> ChangeSet:
    """The transactions the slot holds whose commit LSN is at or after ``start``, up to
    the flushed end of WAL (or ``upto``), without consuming them (module docstring).

    :raises ChangesUnreadable: when the messages do not add up.
    """
    found = ChangeSet(start=start, end=start)
    async for transaction in transactions(conn, slot, publication, start, upto):
        found.transactions.append(transaction)
        found.end = transaction.end_lsn
    return found


async def transactions(
    conn: asyncpg.Connection,
    slot: str,
    publication: str,
    start: int,
    upto: int | None = None,
) -> AsyncGenerator[Transaction, None]:
    """``read_changes``' transactions one at a time, in commit order (each held whole:
    ``stream_batches`` for transactions of any size)."""
    changes: list[RowChange | TruncateChange] = []
    batches = stream_batches(conn, slot, publication, start, upto)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for item in batch:
                if isinstance(item, TransactionStart):
                    changes = []
                elif isinstance(item, TransactionEnd):
                    yield Transaction(
                        item.xid,
                        item.commit_lsn,
                        item.end_lsn,
                        item.commit_time,
                        tuple(changes),
                        item.marks,
                    )
                else:
                    changes.append(item)


async def stream_batches(
    conn: asyncpg.Connection,
    slot: str,
    publication: str,
    start: int,
    upto: int | None = None,
    *,
    marks: bool = False,
) -> AsyncGenerator[list[StreamItem], None]:
    """The transactions ``read_changes`` reads, as each one's start, its changes one by
    one and its end, in commit order, a list of them for each batch of messages fetched
    (a reader that takes an item without awaiting pays no asynchronous step a change: for
    50,000 changes those steps took a fifth of reading them); with ``marks``, the
    decoding messages asyncsnap emitted are in the ends (``TransactionEnd.marks``).

    The server's SQL interface decodes the whole stretch before it returns a row (into a
    tuplestore, spilled to disk past work_mem); the rows then come a batch at a time."""
    assembler = _Assembler(start)
    feed = assembler.feed
    async with conn.transaction(isolation="read_committed", readonly=True):
        cursor = await conn.cursor(
            "SELECT data FROM pg_catalog.pg_logical_slot_peek_binary_changes("
            "$1, $2::pg_catalog.pg_lsn, NULL, 'proto_version', '1', 'publication_names', $3,"
            " 'messages', $4)",
            slot,
            upto,  # asyncpg sends a pg_lsn as an integer
            publication,
            "true" if marks else "false",
        )
        while rows := await cursor.fetch(FETCH_BATCH):
            items = []
            for row in rows:
                item = feed(_decoded(bytes(row[0])))
                if item is not None:
                    items.append(item)
            yield items
    assembler.finish()


def _decoded(data: bytes) -> Message:
    try:
        return decode(data)
    except ValueError as exc:
        raise ChangesUnreadable(f"a message the slot sent cannot be read: {exc}") from exc


async def emit_mark(conn: asyncpg.Connection, content: bytes) -> int:
    """Commit a transaction holding only a decoding message (prefix MARK_PREFIX,
    ``content``), flushed before this returns; the current WAL position after it, which
    is past its commit record.

    An increment ends at the end of this commit: a point every earlier commit's record
    has wholly passed, known to be flushed, and one the slot's reader recognises
    (``transactions(..., marks=True)``). Reading up to "the current position" instead
    could end inside a commit record not yet flushed, which decoding would not return
    although it committed before that point: advancing the slot there would lose it.
    """
    async with conn.transaction():
        # Flushed when COMMIT returns, whatever the role's or database's setting.
        await conn.execute("SET LOCAL synchronous_commit = on")
        await conn.execute(
            "SELECT pg_catalog.pg_logical_emit_message(true, $1, $2::pg_catalog.bytea)",
            MARK_PREFIX,
            content,
        )
    position: int = await conn.fetchval("SELECT pg_catalog.pg_current_wal_lsn()")
    return position


async def advance(conn: asyncpg.Connection, slot: str, to: int) -> None:
    """Move the slot to ``to``: the server forgets (and frees the WAL of) the transactions
    before it. Call it only once what was read up to there is stored."""
    await conn.execute(
        "SELECT pg_catalog.pg_replication_slot_advance($1, $2::pg_catalog.pg_lsn)",
        slot,
        to,
    )
