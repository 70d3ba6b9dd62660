"""Reading a slot's changes (``asyncsnap.changes``) against a real server: the state at
the slot's start, with every transaction read from the slot applied in order, is the
state of the tables at the end, value for value, and no transaction is read twice or
missed when the reading is done in several stretches with the slot advanced between them.

The workload is random (fixed seeds) around the cases decoding makes hard: keys that
change, TOASTed values left untouched (the server does not send them), tables with
REPLICA IDENTITY FULL and duplicate rows, a unique index as identity, TRUNCATE,
rolled-back transactions, and two transactions open at once that commit in the other
order than they began. Values are compared in their text form (the output functions'),
which is what the slot sends."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import anyio
import asyncpg
import pytest

from asyncsnap import pgoutput
from asyncsnap.changes import ChangeSet, RowChange, TruncateChange, advance, read_changes
from asyncsnap.connection import resolve
from asyncsnap.pgoutput import UNCHANGED, parse_lsn
from asyncsnap.slot import SlotCreation
from tests.conftest import Database

SCHEMA = """
CREATE TABLE public.keyed (id int PRIMARY KEY, v text, big text, n numeric);
ALTER TABLE public.keyed ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE public.full_rows (a int, b text);
ALTER TABLE public.full_rows REPLICA IDENTITY FULL;
CREATE TABLE public.by_index (u int NOT NULL, w text, CONSTRAINT by_index_u UNIQUE (u));
ALTER TABLE public.by_index REPLICA IDENTITY USING INDEX by_index_u;
INSERT INTO public.keyed SELECT g, 'v' || g, repeat(md5(g::text), 100), g / 7.0
    FROM generate_series(1, 30) g;
INSERT INTO public.full_rows SELECT g % 5, 'b' || (g % 3) FROM generate_series(1, 20) g;
INSERT INTO public.by_index SELECT g, 'w' || g FROM generate_series(1, 20) g;
CREATE PUBLICATION changes_test FOR TABLE public.keyed, public.full_rows, public.by_index;
"""
TABLES = {"keyed": ("id", "v", "big", "n"), "full_rows": ("a", "b"), "by_index": ("u", "w")}

Row = tuple[Any, ...]  # text values (bytes) or None


async def state(conn: asyncpg.Connection) -> dict[str, list[Row]]:
    """Each table's rows, each value its text form as the slot sends it, sorted."""
    found = {}
    for table, columns in TABLES.items():
        listed = ", ".join(f"{c}::text" for c in columns)
        rows = await conn.fetch(f"SELECT {listed} FROM public.{table}")
        found[table] = sorted(
            (tuple(None if v is None else v.encode() for v in r) for r in rows), key=repr
        )
    return found


def apply(tables: dict[str, list[Row]], changes: ChangeSet) -> None:
    """The transactions applied, in order, to ``tables`` as a subscriber would."""
    for transaction in changes.transactions:
        for change in transaction.changes:
            if isinstance(change, TruncateChange):
                for relation in change.relations:
                    tables[relation.name] = []
                continue
            rows = tables[change.relation.name]
            if change.kind == "insert":
                assert change.new is not None and UNCHANGED not in change.new
                rows.append(change.new)
                continue
            where = _find(rows, change)
            if change.kind == "delete":
                del rows[where]
            else:
                assert change.new is not None
                old = rows[where]
                rows[where] = tuple(
                    o if n == UNCHANGED else n for o, n in zip(old, change.new, strict=True)
                )


def _find(rows: list[Row], change: RowChange) -> int:
    """The row an update or delete means: by the identity's columns (the old key, or the
    new row's when the key did not change), or the whole old row (FULL)."""
    columns = change.relation.columns
    if change.old is not None and not change.old_is_key:  # FULL: the whole old row
        return rows.index(change.old)
    probe = change.old if change.old is not None else change.new
    assert probe is not None
    key = [i for i, c in enumerate(columns) if c.key]
    assert key, change.relation.name
    matches = [i for i, r in enumerate(rows) if all(r[k] == probe[k] for k in key)]
    assert len(matches) == 1, (change, matches)
    return matches[0]


async def workload(dsn: str, rng: random.Random, transactions: int, next_id: int) -> int:
    """Random transactions over the three tables; some rolled back, some interleaved."""
    a = await asyncpg.connect(dsn)
    b = await asyncpg.connect(dsn)
    try:
        for conn in (a, b):
            await conn.execute("SET synchronous_commit = on")  # decoding reads flushed WAL
        for _ in range(transactions):
            shape = rng.random()
            if shape < 0.15:  # two at once, committed in the other order
                await a.execute("BEGIN")
                await b.execute("BEGIN")
                next_id = await _ops(a, rng, next_id)
                # b only inserts new keys of keyed (a never truncates it): it must not
                # wait for a lock a holds
                for _ in range(rng.randint(1, 3)):
                    await b.execute(
                        "INSERT INTO public.keyed VALUES ($1, 'from b', 'small', 0)", next_id
                    )
                    next_id += 1
                await b.execute("COMMIT")
                await a.execute("COMMIT")
            elif shape < 0.25:
                await a.execute("BEGIN")
                next_id = await _ops(a, rng, next_id)
                await a.execute("ROLLBACK")
            else:
                await a.execute("BEGIN")
                next_id = await _ops(a, rng, next_id)
                await a.execute("COMMIT")
    finally:
        await a.close()
        await b.close()
    return next_id


async def _ops(conn: asyncpg.Connection, rng: random.Random, next_id: int) -> int:
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if op < 0.25:
            await conn.execute(
                "INSERT INTO public.keyed VALUES ($1, $2, repeat(md5($2), 100), $3)",
                next_id,
                f"new {next_id}",
                rng.randint(-5, 5),
            )
            next_id += 1
        elif op < 0.35:  # the key changes; the TOASTed value goes along untouched
            await conn.execute(
                "UPDATE public.keyed SET id = $1 WHERE id = (SELECT min(id) FROM public.keyed)",
                next_id,
            )
            next_id += 1
        elif op < 0.45:  # only v: big is not sent (unchanged TOAST)
            await conn.execute(
                "UPDATE public.keyed SET v = v || '+' WHERE id % 7 = $1", rng.randint(0, 6)
            )
        elif op < 0.5:
            await conn.execute(
                "UPDATE public.keyed SET big = repeat(md5(random()::text), 90) WHERE id % 11 = $1",
                rng.randint(0, 10),
            )
        elif op < 0.58:
            await conn.execute("DELETE FROM public.keyed WHERE id % 13 = $1", rng.randint(0, 12))
        elif op < 0.7:  # duplicates: FULL identity finds one of them
            await conn.execute(
                "INSERT INTO public.full_rows VALUES ($1, $2)", rng.randint(0, 4), "b1"
            )
            await conn.execute(
                "UPDATE public.full_rows SET b = b || 'x' WHERE ctid = (SELECT min(ctid)"
                " FROM public.full_rows WHERE a = $1)",
                rng.randint(0, 4),
            )
        elif op < 0.78:
            await conn.execute(
                "DELETE FROM public.full_rows WHERE ctid = (SELECT max(ctid)"
                " FROM public.full_rows WHERE a = $1)",
                rng.randint(0, 4),
            )
        elif op < 0.9:
            await conn.execute(
                "UPDATE public.by_index SET u = u + 1000000, w = w || 'u' WHERE u = ("
                "SELECT min(u) FROM public.by_index)"
            )
        elif op < 0.95:
            await conn.execute("INSERT INTO public.by_index VALUES ($1, 'i')", next_id)
            next_id += 1
        else:
            await conn.execute("TRUNCATE public.full_rows")
    return next_id


async def _round_trip(dsn: str, seed: int, stretches: Sequence[int]) -> None:
    rng = random.Random(seed)
    slot = f"changes_{seed}"
    creation = SlotCreation(resolve(dsn), slot, 150000)
    conn = await asyncpg.connect(dsn)
    try:
        creation.server_version = await conn.fetchval(
            "SELECT current_setting('server_version_num')::int"
        )
        lsn, snapshot, _ = await creation.create()
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        tables = await state(conn)
        await conn.execute("COMMIT")
        await creation.close()

        position = parse_lsn(lsn)
        read, next_id = 0, 1000
        for index, size in enumerate(stretches):
            next_id = await workload(dsn, rng, size, next_id)
            changes = await read_changes(conn, slot, "changes_test", position)
            assert changes.start == position and changes.end >= position
            commits = [t.commit_lsn for t in changes.transactions]
            assert commits == sorted(commits) and (not commits or commits[0] >= position)
            apply(tables, changes)
            read += len(changes.transactions)
            # Read again before the slot moves: the same transactions, none more.
            again = await read_changes(conn, slot, "changes_test", position, upto=changes.end)
            assert [t.commit_lsn for t in again.transactions] == commits
            # After the first stretch the slot is not moved, as when a run is killed between
            # storing what it read and advancing: the next read skips what was read.
            if changes.end > position and index != 0:
                await advance(conn, slot, changes.end)
            position = changes.end
        assert read > len(stretches)
        assert {k: sorted(v, key=repr) for k, v in tables.items()} == await state(conn)
    finally:
        await conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = $1",
            slot,
        )
        await conn.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_slots_changes_take_the_start_to_the_end(db: Database, seed: int) -> None:
    db.execute(SCHEMA)
    anyio.run(_round_trip, db.dsn, seed, (25, 1, 40), backend="asyncio")


@pytest.mark.versions
def test_the_slots_changes_on_each_major(db: Database) -> None:
    db.execute(SCHEMA)
    anyio.run(_round_trip, db.dsn, 7, (30, 30), backend="asyncio")


def test_changes_that_do_not_add_up_are_refused() -> None:
    from asyncsnap.changes import ChangesUnreadable, _Assembler

    begin = pgoutput.Begin(final_lsn=100, commit_time=0, xid=5)
    insert = pgoutput.Insert(relation=42, new=(b"1",))
    cases: list[tuple[list[pgoutput.Message], str]] = [
        ([insert], "outside a transaction"),
        ([begin, insert], "never described"),
        ([begin, begin], "began inside another"),
        ([pgoutput.Commit(100, 120, 0)], "without its transaction"),
        ([begin, pgoutput.Commit(101, 120, 0)], "announced at"),
    ]
    for messages, says in cases:
        assembler = _Assembler(0)
        with pytest.raises(ChangesUnreadable, match=says):
            for m in messages:
                assembler.feed(m)
    assembler = _Assembler(0)
    assembler.feed(begin)
    with pytest.raises(ChangesUnreadable, match="ended inside a transaction"):
        assembler.finish()
