"""One snapshot: a dump taken while money moves is a picture of a single instant."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import asyncpg
import pytest

import asyncsnap
from asyncsnap.events import ChunkFinished, DumpStarted, Event

from .conftest import Database
from .helpers import read_rows

pytestmark = pytest.mark.anyio

TABLES = ["accounts", "accounts_eu", "accounts_us", "savings"]
ROWS = 40_000
START_BALANCE = 1_000


async def test_consistency_under_concurrent_transfers(db: Database, tmp_path: Path) -> None:
    """While a task keeps moving amounts between rows of one table and across tables in
    committed transactions, a -j 4 dump's files add up to the same total as at one instant.
    """
    conn = await asyncpg.connect(db.dsn)
    try:
        for name in TABLES:
            await conn.execute(
                f"CREATE TABLE {name} (id int PRIMARY KEY, balance bigint NOT NULL, pad text);"
                f"INSERT INTO {name} SELECT g, {START_BALANCE}, repeat('p', 200) "
                f"FROM generate_series(1, {ROWS}) g; ANALYZE {name};"
            )
    finally:
        await conn.close()
    total = len(TABLES) * ROWS * START_BALANCE

    commits = 0
    marks: dict[str, int] = {}
    stop = anyio.Event()

    async def move_money() -> None:
        nonlocal commits
        rng = random.Random(7)
        mover = await asyncpg.connect(db.dsn)
        try:
            while not stop.is_set():
                src, dst = rng.choice(TABLES), rng.choice(TABLES)  # same table or two tables
                a, b, amount = rng.randint(1, ROWS), rng.randint(1, ROWS), rng.randint(1, 50)
                async with mover.transaction():
                    await mover.execute(
                        f"UPDATE {src} SET balance = balance - $1 WHERE id = $2", amount, a
                    )
                    await mover.execute(
                        f"UPDATE {dst} SET balance = balance + $1 WHERE id = $2", amount, b
                    )
                commits += 1
        finally:
            await mover.close()

    def on_event(event: Event) -> None:
        if isinstance(event, DumpStarted):
            marks["started"] = commits
        elif isinstance(event, ChunkFinished):
            marks.setdefault("first_file_done", commits)

    async with anyio.create_task_group() as tg:
        tg.start_soon(move_money)
        await anyio.sleep(0.2)  # transfers are flowing before the snapshot is taken
        result = await asyncsnap.dump(db.dsn, output=tmp_path, jobs=4, on_event=on_event)
        marks["finished"] = commits
        stop.set()

    # The test means something only if money moved while the files were being written.
    # (How much depends on the machine: the mover shares this event loop with the dump,
    # and with -n 2 the other worker shares the cores; 20 moves was once exactly 20.)
    assert marks["finished"] - marks["started"] > 5, marks
    assert marks["first_file_done"] > marks["started"], marks

    rows = read_rows(result.path)
    assert {k[1] for k in rows} == set(TABLES)
    assert all(len(v) == ROWS for v in rows.values())
    assert sum(r["balance"] for v in rows.values() for r in v) == total

    # And the database moved on after the snapshot: the dump is not simply "the end state".
    check = await asyncpg.connect(db.dsn)
    try:
        now_total = 0
        for name in TABLES:
            now_total += await check.fetchval(f"SELECT sum(balance) FROM {name}")
        assert now_total == total  # the invariant holds in the database as well
    finally:
        await check.close()
