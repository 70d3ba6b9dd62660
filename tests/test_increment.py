"""``dump --since``: incremental backups of a chain, against real servers.

The central promise: a full backup made with ``--slot`` with its increments' change lines
applied in order (each row by its replica identity, unchanged TOASTed values kept) holds
exactly the rows a full backup of the same moment holds, line for line. The workload is
random (fixed seeds) around what decoding makes hard: keys that change, TOASTed values
left untouched, REPLICA IDENTITY FULL with duplicate rows, a unique index as identity,
partitions a row moves between, a generated column, TRUNCATE, rolled-back and
interleaved transactions, values that are hard to write exactly. The oracle is a full
dump of the end state, made by the same tool's full-backup path and checked against the
server by the dump's own tests."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
import zstandard

from asyncsnap.api import restore
from asyncsnap.dump import dump
from asyncsnap.errors import ExitCode, RestoreFailed, UsageError, VerificationFailed
from asyncsnap.format import Backup
from asyncsnap.increment import ChainBroken, dump_increment
from asyncsnap.restore import replay
from asyncsnap.slot import NotReplicable
from asyncsnap.storage.backup import open_backup
from asyncsnap.verify import verify
from tests.conftest import Database, clean_env, fresh_database, run_cli
from tests.test_store_backups import cli_env
from throwaway.s3 import BUCKET, S3Server, s3_server

SCHEMA = (
    """
CREATE TABLE public.accounts (id int PRIMARY KEY, balance numeric, note text, tags text[],
    doc jsonb, at timestamptz, raw bytea, f float8, big text);
ALTER TABLE public.accounts ALTER COLUMN big SET STORAGE EXTERNAL;  -- TOASTed, uncompressed
CREATE TABLE public.dupes (a int, b text);
ALTER TABLE public.dupes REPLICA IDENTITY FULL;
CREATE TABLE public.by_index (u int NOT NULL, w text, CONSTRAINT by_index_u UNIQUE (u));
ALTER TABLE public.by_index REPLICA IDENTITY USING INDEX by_index_u;
CREATE TABLE public.{odd} (id int PRIMARY KEY, v text,
    g int GENERATED ALWAYS AS (id * 2) STORED, "it's $asyncsnap$ x" text DEFAULT 'd');
CREATE TABLE public.parts (id int, region text, v text, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE public.parts_eu PARTITION OF public.parts FOR VALUES IN ('eu');
CREATE TABLE public.parts_us PARTITION OF public.parts FOR VALUES IN ('us');
CREATE SEQUENCE public.counter;
CREATE TABLE public.pk_and_index (id int PRIMARY KEY, code text NOT NULL, v text,
    CONSTRAINT pk_and_index_code UNIQUE (code));
ALTER TABLE public.pk_and_index REPLICA IDENTITY USING INDEX pk_and_index_code;
INSERT INTO public.pk_and_index SELECT g, 'c' || g, 'v' FROM generate_series(1, 10) g;
-- an identity column only its default may set, and columns named like the restore's
-- PL/pgSQL variables
CREATE TABLE public.always_id (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text,
    ch text, found_row text, done int);
INSERT INTO public.always_id (v, ch, found_row, done)
    SELECT 'v' || g, 'ch', 'fr', g FROM generate_series(1, 10) g;
INSERT INTO public.accounts SELECT g, g / 7.0, 'n' || g, ARRAY['a', NULL, 'c'],
    jsonb_build_object('k', g), '2026-01-01'::timestamptz + g * interval '1 hour',
    '\\x00ff'::bytea, g * 0.1, repeat(md5(g::text), 100)
    FROM generate_series(1, 40) g;
INSERT INTO public.dupes SELECT g % 4, 'b' || (g % 2) FROM generate_series(1, 16) g;
INSERT INTO public.by_index SELECT g, 'w' || g FROM generate_series(1, 20) g;
INSERT INTO public.{odd} SELECT g, 'v' || g FROM generate_series(1, 10) g;
INSERT INTO public.parts SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'p' || g
    FROM generate_series(1, 10) g;
"""
).format(odd='"Odd ""name"""')
# The identity columns each table's rows are found by (None: the whole row, FULL).
IDENTITY: dict[str, tuple[str, ...] | None] = {
    "accounts": ("id",),
    "dupes": None,
    "by_index": ("u",),
    'Odd "name"': ("id",),
    "parts_eu": ("id", "region"),
    "parts_us": ("id", "region"),
    "pk_and_index": ("code",),  # an identity index beside another primary key
    "always_id": ("id",),
}
GENERATED = {'Odd "name"': ("g",)}  # recomputed by a restore; the slot does not send them
HARD_TEXT = ["", "tab\there", "line\nbreak", 'quote " and \\ slash', "é ü 日本", "\x01\x1f"]
HARD_FLOAT = ["NaN", "Infinity", "-Infinity", "-0", "1e308", "5e-324", "0.1"]
HARD_NUMERIC = ["NaN", "0", "-0.000", "123456789012345678901234567890.123456789", "1e-20"]

Rows = dict[str, list[dict[str, Any]]]


def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return anyio.run(partial(fn, *args, **kwargs), backend="asyncio")


def slot_name() -> str:
    return "inc_" + uuid.uuid4().hex[:10]


def parse(line: bytes) -> Any:
    """A line with every number kept as its text: compared exactly."""
    return json.loads(line, parse_float=str, parse_int=str)


def lines(backup: Backup, path: str) -> list[bytes]:
    raw = (Path(backup.path) / path).read_bytes()
    text = zstandard.ZstdDecompressor().decompress(raw, max_output_size=1 << 28)
    return text.splitlines()


def full_rows(path: Path) -> Rows:
    backup = open_backup(path)
    found: Rows = {}
    for table in backup.tables:
        if table.kind == "partitioned":
            continue
        found[table.name] = [parse(x) for f in table.files for x in lines(backup, f.path)]
    return found


def apply_increment(rows: Rows, path: Path, seen: set[str] | None = None) -> Backup:
    """``path``'s change lines applied to ``rows`` as a restore must apply them; ``seen``
    gets the kinds of change met (to check that the workload made each)."""
    backup = open_backup(path, increments=True)
    for table in backup.tables:
        for f in table.files:
            for raw in lines(backup, f.path):
                change = parse(raw)
                apply_change(rows.setdefault(table.name, []), table.name, change)
                if seen is not None:
                    seen.add(_kind(table.name, change))
    return backup


def _kind(table: str, change: dict[str, Any]) -> str:
    if change["unchanged"]:
        return "unchanged TOAST"
    identity = IDENTITY[table]
    if change["op"] == "update" and identity is None:
        return f"{table}: whole old row"
    if change["op"] == "update" and any(
        change["key"][c] != change["row"][c] for c in identity or ()
    ):
        return f"{table}: key changed"
    return f"{change['op']} {table}"


def apply_change(rows: list[dict[str, Any]], table: str, change: dict[str, Any]) -> None:
    assert list(change) == ["op", "lsn", "xid", "n", "key", "row", "unchanged"]
    op, key, row = change["op"], change["key"], change["row"]
    if op == "truncate":
        rows.clear()
        return
    if op == "insert":
        assert key is None and not change["unchanged"]
        rows.append(row)
        return
    identity = IDENTITY[table]
    assert key is not None, change  # every update and delete names its row
    probe = key
    names = list(probe) if identity is None else list(identity)
    assert identity is None or list(key) == list(identity), change
    matches = [i for i, r in enumerate(rows) if all(r[c] == probe[c] for c in names)]
    assert matches, (table, change)
    assert identity is None or len(matches) == 1, (table, change)
    if op == "delete":
        assert row is None
        del rows[matches[0]]
        return
    old = rows[matches[0]]
    assert set(change["unchanged"]) | set(row) == set(old) - set(GENERATED.get(table, ()))
    rows[matches[0]] = {**old, **row}


def comparable(rows: Rows) -> dict[str, list[str]]:
    return {
        table: sorted(
            json.dumps({k: v for k, v in r.items() if k not in GENERATED.get(table, ())})
            for r in found
        )
        for table, found in rows.items()
    }


async def workload(dsn: str, rng: random.Random, transactions: int) -> None:
    """Random transactions over every table: some rolled back, some interleaved."""
    a = await asyncpg.connect(dsn)
    b = await asyncpg.connect(dsn)
    try:
        next_id = 1000 + rng.randrange(10**6) * 100
        for _ in range(transactions):
            shape = rng.random()
            if shape < 0.15:  # two at once, committed in the other order than begun
                await a.execute("BEGIN")
                await b.execute("BEGIN")
                next_id = await _ops(a, rng, next_id, truncate=False)
                await b.execute(
                    "INSERT INTO public.by_index VALUES ($1, 'from b')", next_id + 50_000_000
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


async def _ops(
    conn: asyncpg.Connection, rng: random.Random, next_id: int, truncate: bool = True
) -> int:
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(14)
        if op == 0:
            await conn.execute(
                "INSERT INTO public.accounts VALUES ($1, $2::text::numeric, $3, $4,"
                " $5::text::jsonb, now(), $6, $7::text::float8, $8)",
                next_id,
                rng.choice(HARD_NUMERIC),
                rng.choice([*HARD_TEXT, None]),
                rng.choice([[], ["x", None], ['{"q"}', "a,b"], None]),
                rng.choice(['{"a": null}', "null", '[1, 2.50, "x"]', None]),
                rng.choice([b"", b"\x00\x01", bytes(range(256)), None]),
                rng.choice(HARD_FLOAT),
                rng.choice(["small", "b" * 9000, None]),
            )
            next_id += 1
        elif op == 1:  # the TOASTed column untouched: the slot sends it as unchanged
            await conn.execute(
                "UPDATE public.accounts SET balance = balance + 1, note = $2"
                " WHERE id = (SELECT min(id) FROM public.accounts WHERE id >= $1)",
                rng.randrange(1, 60),  # mostly the first rows, whose big values are TOASTed
                rng.choice(HARD_TEXT),
            )
        elif op == 2:
            await conn.execute(
                "UPDATE public.accounts SET big = $2 WHERE id = (SELECT max(id)"
                " FROM public.accounts WHERE id <= $1)",
                rng.randrange(1, next_id),
                "B" * rng.choice([10, 9000]),
            )
        elif op == 3:  # a key that changes
            await conn.execute(
                "UPDATE public.accounts SET id = $2 WHERE id = (SELECT min(id) FROM"
                " public.accounts WHERE id >= $1)",
                rng.randrange(1, next_id),
                next_id,
            )
            next_id += 1
        elif op == 4:
            await conn.execute(
                "DELETE FROM public.accounts WHERE id = (SELECT min(id) FROM public.accounts"
                " WHERE id >= $1)",
                rng.randrange(1, next_id),
            )
        elif op == 5:
            await conn.execute(
                "INSERT INTO public.dupes SELECT $1, 'b' || $2::int FROM generate_series(1, 2)",
                rng.randrange(4),
                rng.randrange(2),
            )
        elif op == 6:  # one of several identical rows
            await conn.execute(
                "UPDATE public.dupes SET b = b || 'x' WHERE ctid = (SELECT min(ctid) FROM"
                " public.dupes WHERE a = $1)",
                rng.randrange(4),
            )
        elif op == 7:
            await conn.execute("DELETE FROM public.dupes WHERE a = $1", rng.randrange(4))
        elif op == 8 and truncate and rng.random() < 0.3:
            await conn.execute("TRUNCATE public.dupes")
        elif op == 9:  # the identity (a unique index) changes
            await conn.execute(
                "UPDATE public.by_index SET u = $2 WHERE u = (SELECT min(u) FROM public.by_index"
                " WHERE u >= $1)",
                rng.randrange(1, 30),
                next_id,
            )
            next_id += 1
        elif op == 10:
            await conn.execute(
                'INSERT INTO public."Odd ""name""" (id, v) VALUES ($1, $2)',
                next_id,
                rng.choice(HARD_TEXT),
            )
            next_id += 1
        elif op == 11:
            await conn.execute(
                'UPDATE public."Odd ""name""" SET id = id + 1000000, v = \'moved\''
                ' WHERE id = (SELECT min(id) FROM public."Odd ""name""" WHERE id >= $1)',
                rng.randrange(1, next_id),
            )
        elif op == 12:  # a row that moves to the other partition: delete, then insert
            await conn.execute(
                "UPDATE public.parts SET region = CASE region WHEN 'eu' THEN 'us' ELSE 'eu' END"
                " WHERE id = (SELECT min(id) FROM public.parts WHERE id >= $1)",
                rng.randrange(1, 12),
            )
        elif rng.random() < 0.3:
            await conn.execute(
                "UPDATE public.always_id SET v = v || 'x', ch = $2, done = done + 1"
                " WHERE id = (SELECT min(id) FROM public.always_id WHERE id >= $1)",
                rng.randrange(1, 12),
                rng.choice(HARD_TEXT),
            )
            await conn.execute(
                "INSERT INTO public.always_id (v, ch, found_row, done) VALUES ('new', 'c', 'f', 0)"
            )
        elif rng.random() < 0.5:  # the identity index's columns change, or not
            await conn.execute(
                "UPDATE public.pk_and_index SET v = v || 'x',"
                " code = CASE WHEN $2 THEN code || 'y' ELSE code END WHERE id = $1",
                rng.randrange(1, 11),
                rng.random() < 0.5,
            )
        else:
            await conn.execute("SELECT nextval('public.counter')")
    return next_id


@pytest.mark.versions
def test_a_chain_of_increments_applied_to_its_full_backup_is_the_end_state(
    db: Database, tmp_path: Path
) -> None:
    db.execute(SCHEMA)
    slot = slot_name()
    run(dump, db.dsn, output=tmp_path, slot=slot, name="full")
    rows = full_rows(tmp_path / "full")
    rng = random.Random(25)
    parent = "full"
    seen: set[str] = set()
    for step in range(3):
        run(workload, db.dsn, rng, 25)
        result = run(dump_increment, db.dsn, since=tmp_path / parent, name=f"inc{step}")
        assert result.parent == parent and result.changes > 0
        backup = apply_increment(rows, tmp_path / f"inc{step}", seen)
        assert backup.increment is not None and backup.increment.parent == parent
        assert verify(tmp_path / f"inc{step}").ok
        parent = f"inc{step}"
    end = run(dump, db.dsn, output=tmp_path, name="end", with_schema=False)
    assert comparable(rows) == comparable(full_rows(tmp_path / "end"))
    assert {
        "unchanged TOAST",
        "accounts: key changed",
        "by_index: key changed",
        "dupes: whole old row",
        "delete dupes",
        "truncate dupes",
        "delete parts_eu",
        "pk_and_index: key changed",
        "update always_id",
        "insert parts_us",
        'insert Odd "name"',
    } <= seen, seen
    # The slot was advanced to the last increment's end, and its sequences are now's.
    last = open_backup(tmp_path / parent, increments=True)
    assert last.increment is not None
    assert (
        db.fetchval(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot
        )
        == last.increment.end_lsn
    )
    assert [(s.name, s.last_value, s.is_called) for s in last.sequences] == [
        (s.name, s.last_value, s.is_called) for s in end.written.sequences
    ]


@pytest.mark.versions
def test_increments_taken_while_writers_commit_miss_and_repeat_nothing(
    db: Database, tmp_path: Path
) -> None:
    """Commits land before, during and after each increment's boundary (one writer with
    ``synchronous_commit = off``, whose last commits are not yet flushed when an
    increment reads): every one is in exactly one increment."""
    db.execute(SCHEMA)
    run(dump, db.dsn, output=tmp_path, slot=slot_name(), name="full")
    rows = full_rows(tmp_path / "full")

    async def scenario() -> None:
        stop = anyio.Event()

        async def writer(lazy: bool, first: int) -> None:
            conn = await asyncpg.connect(db.dsn)
            try:
                if lazy:
                    await conn.execute("SET synchronous_commit = off")
                n = first
                while not stop.is_set():
                    async with conn.transaction():
                        await conn.execute("INSERT INTO public.by_index VALUES ($1, 'w')", n)
                        await conn.execute(
                            "UPDATE public.accounts SET balance = balance + 1 WHERE id = $1",
                            n % 40 + 1,
                        )
                    n += 1
            finally:
                await conn.close()

        parent = "full"
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer, True, 10_000)
            tg.start_soon(writer, False, 20_000_000)
            for step in range(6):
                await anyio.sleep(0.15)
                await dump_increment(db.dsn, since=tmp_path / parent, name=f"inc{step}")
                parent = f"inc{step}"
            stop.set()
        await dump_increment(db.dsn, since=tmp_path / parent, name="last")

    run(scenario)
    for name in [*(f"inc{step}" for step in range(6)), "last"]:
        apply_increment(rows, tmp_path / name)
    run(dump, db.dsn, output=tmp_path, name="end", with_schema=False)
    assert comparable(rows) == comparable(full_rows(tmp_path / "end"))
    assert len(rows["by_index"]) > 100


def slot_position(db: Database, slot: str) -> str | None:
    return db.fetchval(  # type: ignore[no-any-return]
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot
    )


def chain(db: Database, tmp_path: Path) -> str:
    """A chain's full backup (``full``), and its slot's name."""
    db.execute(SCHEMA)
    slot = slot_name()
    run(dump, db.dsn, output=tmp_path, slot=slot, name="full")
    return slot


@pytest.mark.parametrize(
    "ddl, names",
    [
        ("ALTER TABLE public.accounts ADD COLUMN extra int", "public.accounts"),
        ("ALTER TABLE public.by_index ALTER COLUMN w TYPE varchar(20)", "public.by_index"),
        ("DROP TABLE public.dupes", "public.dupes was dropped or renamed"),
        ("ALTER TABLE public.dupes RENAME TO dupes2", "public.dupes was dropped or renamed"),
        (
            "ALTER TABLE public.by_index ADD PRIMARY KEY (u)",  # the key restore finds rows by
            "public.by_index's definition changed",
        ),
        # Undone before the increment: the catalog is as it was, the slot's relation
        # message for the insert made in between is not.
        (
            "ALTER TABLE public.accounts ADD COLUMN extra int;"
            " INSERT INTO public.accounts (id, extra) VALUES (-1, 5);"
            " ALTER TABLE public.accounts DROP COLUMN extra",
            "public.accounts",
        ),
        (
            "CREATE TABLE public.newer (id int PRIMARY KEY); ALTER PUBLICATION {slot} ADD"
            " TABLE public.newer; INSERT INTO public.newer VALUES (1)",
            "public.newer is in publication",
        ),
    ],
)
def test_what_an_increment_cannot_carry_fails_it_and_nothing_is_written(
    db: Database, tmp_path: Path, ddl: str, names: str
) -> None:
    slot = chain(db, tmp_path)
    db.execute("INSERT INTO public.accounts (id) VALUES (-2)")
    db.execute(ddl.format(slot=slot))
    before = slot_position(db, slot)
    with pytest.raises(ChainBroken, match=names.replace(".", r"\.")) as failure:
        run(dump_increment, db.dsn, since=tmp_path / "full")
    assert failure.value.hint == "a new full backup starts a new chain: asyncsnap dump --slot NAME"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".asyncsnap.lock", "full"] or sorted(
        p.name for p in tmp_path.iterdir()
    ) == ["full"]
    assert slot_position(db, slot) == before


def test_a_table_made_since_the_full_backup_is_named(db: Database, tmp_path: Path) -> None:
    chain(db, tmp_path)
    db.execute(
        "CREATE TABLE public.newer (id int PRIMARY KEY); INSERT INTO public.newer VALUES (1)"
    )
    said: list[str] = []
    result = run(
        dump_increment,
        db.dsn,
        since=tmp_path / "full",
        on_event=lambda event: said.append(getattr(event, "message", "")),
    )
    assert result.new_tables == ("public.newer",)
    assert "public.newer is not in this chain (added since its full backup?)" in said


def test_a_gone_slot_fails_the_increment_and_nothing_is_written(
    db: Database, tmp_path: Path
) -> None:
    slot = chain(db, tmp_path)
    db.execute("SELECT pg_drop_replication_slot($1)", slot)
    with pytest.raises(NotReplicable, match=f"replication slot {slot} no longer exists"):
        run(dump_increment, db.dsn, since=tmp_path / "full")
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["full"]


def test_an_increment_not_advanced_is_read_again_to_the_same_files(
    db: Database, tmp_path: Path
) -> None:
    """What a run killed after its backup was complete but before the slot moved leaves:
    the next run from the same parent reads the same transactions (and skips the dead
    run's boundary), so its files are the same, byte for byte."""
    slot = chain(db, tmp_path)
    run(workload, db.dsn, random.Random(7), 20)
    first = run(dump_increment, db.dsn, since=tmp_path / "full", name="a", advance_slot=False)
    assert slot_position(db, slot) == open_backup(tmp_path / "full").manifest.slot.consistent_lsn  # type: ignore[union-attr]
    second = run(dump_increment, db.dsn, since=tmp_path / "full", name="b")
    assert first.changes == second.changes > 0
    assert (tmp_path / "a" / "SHA256SUMS").read_bytes() == (
        tmp_path / "b" / "SHA256SUMS"
    ).read_bytes()
    assert slot_position(db, slot) == second.end_lsn


def test_an_increment_with_no_changes_is_small_and_advances_the_slot(
    db: Database, tmp_path: Path
) -> None:
    slot = chain(db, tmp_path)
    db.execute(
        "CREATE TABLE public.unpublished (id int); INSERT INTO public.unpublished VALUES (1)"
    )
    result = run(dump_increment, db.dsn, since=tmp_path / "full", name="none")
    assert (result.transactions, result.changes, result.files) == (0, 0, 0)
    assert sorted(p.name for p in (tmp_path / "none").rglob("*")) == [
        "SHA256SUMS",
        "data",
        "manifest.json",
    ]
    assert slot_position(db, slot) == result.end_lsn != result.start_lsn
    assert verify(tmp_path / "none").ok


def test_dump_since_from_the_command_line(db: Database, tmp_path: Path) -> None:
    chain(db, tmp_path)
    db.execute("UPDATE public.accounts SET note = 'cli' WHERE id = 1")
    summary = tmp_path.parent / f"{tmp_path.name}-summary.json"
    done = run_cli(
        "dump", db.dsn, "--since", str(tmp_path / "full"), "--name", "inc",
        "--summary-json", str(summary), env=clean_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path / 'inc'}\n"
    outcome = json.loads(summary.read_text())
    assert (outcome["parent"], outcome["transactions"], outcome["changes"]) == ("full", 1, 1)
    # A failed increment's summary has the same keys (null for what it did not get to).
    failed = run_cli(
        "dump", db.dsn, "--since", str(tmp_path / "full"), "--name", "inc",
        "--summary-json", str(summary), env=clean_env(),
    )  # fmt: skip
    assert failed.returncode == ExitCode.OUTPUT, failed.stderr
    assert set(json.loads(summary.read_text())) == set(outcome)
    assert "increment of full: 1 transaction, 1 change in 1 table" in done.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (["-t", "public.accounts"], "-t/-T/-n/-N does not apply to an incremental backup"),
        (["--slot", "other"], "--slot does not apply to an incremental backup"),
        (["-o", "elsewhere"], "an increment is written beside its parent"),
    ],
)
def test_options_an_increment_cannot_take_are_usage_errors(
    db: Database, tmp_path: Path, args: list[str], says: str
) -> None:
    chain(db, tmp_path)
    done = run_cli(
        "dump", db.dsn, "--since", str(tmp_path / "full"), *args, env=clean_env(), cwd=tmp_path
    )
    assert done.returncode == ExitCode.USAGE
    assert done.stderr.splitlines()[-2].startswith(f"error: {says}"), done.stderr


def test_a_full_backup_without_a_slot_cannot_be_followed(db: Database, tmp_path: Path) -> None:
    db.execute(SCHEMA)
    run(dump, db.dsn, output=tmp_path, name="plain", with_schema=False)
    with pytest.raises(UsageError, match="was not made with a replication slot"):
        run(dump_increment, db.dsn, since=tmp_path / "plain")


def test_commands_that_read_only_full_backups_refuse_an_increment(
    db: Database, tmp_path: Path
) -> None:
    chain(db, tmp_path)
    run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    for args in (
        ["inspect", str(tmp_path / "inc"), "--sql", "duckdb"],
        ["convert", str(tmp_path / "inc"), str(tmp_path / "parquet")],
    ):
        done = run_cli(*args, env=clean_env())
        assert done.returncode == ExitCode.VERIFY, (args, done.stderr)
        assert (
            f"{tmp_path / 'inc'} is an incremental backup (the changes after full)" in done.stderr
        )
    with pytest.raises(VerificationFailed, match="is an incremental backup"):
        open_backup(tmp_path / "inc")
    assert run_cli("verify", str(tmp_path / "inc"), env=clean_env()).returncode == 0


def test_inspect_shows_an_increment_and_prune_keeps_its_chain(db: Database, tmp_path: Path) -> None:
    chain(db, tmp_path)
    # Default names (retention's), one second apart so that they sort by time.
    parent = "full"
    for name in ("backup_20260101T000000Z", "backup_20260101T000001Z"):
        db.execute("UPDATE public.accounts SET note = $1 WHERE id = 2", name)
        run(dump_increment, db.dsn, since=tmp_path / parent, name=name)
        parent = name
    shown = run_cli("inspect", str(tmp_path / "backup_20260101T000001Z"), env=clean_env())
    assert shown.returncode == 0, shown.stderr
    assert "INCREMENT" in shown.stdout and "the changes after" in shown.stdout
    as_json = json.loads(
        run_cli("inspect", "--json", str(tmp_path / "backup_20260101T000001Z")).stdout
    )
    assert as_json["increment"]["parent"]["name"] == "backup_20260101T000000Z"
    assert as_json["increment"]["transactions"] == 1
    # "full" has a name of its own; the first increment is older than the one kept.
    pruned = run_cli("prune", str(tmp_path), "--keep", "1", env=clean_env())
    assert pruned.returncode == 0, pruned.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "backup_20260101T000000Z",
        "backup_20260101T000001Z",
        "full",
    ]


def test_inspect_with_a_database_shows_the_slots_wal_and_which_backup_it_follows(
    db: Database, tmp_path: Path
) -> None:
    """inspect -d: the WAL the chain's slot holds, and whether dump --since the backup
    would work (the latest: yes; an older one: no, a later increment moved the slot; the
    slot dropped: no), the same in --json; a backup without a slot: a usage error."""
    slot = chain(db, tmp_path)
    db.execute("UPDATE public.accounts SET note = 'x' WHERE id = 1")
    run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")

    def standing(name: str) -> dict[str, Any]:
        done = run_cli("inspect", str(tmp_path / name), "-d", db.dsn, "--json", env=clean_env())
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["slot_now"]  # type: ignore[no-any-return]

    latest = standing("inc")
    assert latest["exists"] and latest["followable"] and latest["latest"]
    assert latest["held_bytes"] >= 0 and latest["confirmed_flush_lsn"] == latest["backup_end_lsn"]
    older = standing("full")
    assert older["exists"] and not older["followable"] and not older["latest"]
    done = run_cli("inspect", str(tmp_path / "inc"), "-d", db.dsn, env=clean_env())
    assert "slot now" in done.stdout and "the next increment" in done.stdout, done.stdout
    done = run_cli("inspect", str(tmp_path / "full"), "-d", db.dsn, env=clean_env())
    assert "a later increment advanced it" in " ".join(done.stdout.split()), done.stdout
    plain = run_cli("inspect", str(tmp_path / "inc"), "--json", env=clean_env())
    assert json.loads(plain.stdout)["slot_now"] is None
    assert run_cli("drop-slot", slot, db.dsn, env=clean_env()).returncode == 0
    gone = standing("inc")
    assert not gone["exists"] and not gone["followable"]
    assert "no longer exists" in gone["why"]
    run(dump, db.dsn, output=tmp_path, name="plain", with_schema=False)
    done = run_cli("inspect", str(tmp_path / "plain"), "-d", db.dsn, env=clean_env())
    assert done.returncode == ExitCode.USAGE
    assert "was not made with a replication slot" in done.stderr


def table_digests(dsn: str) -> dict[str, tuple[int, str]]:
    """Each table's row count and the md5 of its rows' text, sorted: SQL's own answer."""

    async def read() -> dict[str, tuple[int, str]]:
        conn = await asyncpg.connect(dsn)
        try:
            found = {}
            names = await conn.fetch(
                "SELECT format('%I.%I', n.nspname, c.relname) AS t FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind = 'r' AND n.nspname = 'public'"
            )
            for (name,) in names:
                found[name] = tuple(
                    await conn.fetchrow(
                        f"SELECT count(*), md5(coalesce(string_agg(r, E'\\n' ORDER BY r), ''))"
                        f" FROM (SELECT t::text AS r FROM {name} t) s"
                    )
                )
            return found
        finally:
            await conn.close()

    return run(read)  # type: ignore[no-any-return]


@pytest.mark.versions
def test_a_restored_chain_is_the_source_table_for_table(db: Database, tmp_path: Path) -> None:
    """Full backup, three increments of a random workload, restored (a whole restore into
    an empty database): every table's rows and every sequence equal the source's, as SQL
    computes them on both."""
    chain(db, tmp_path)
    rng = random.Random(2512)
    parent = "full"
    for step in range(3):
        run(workload, db.dsn, rng, 30)
        run(dump_increment, db.dsn, since=tmp_path / parent, name=f"inc{step}")
        parent = f"inc{step}"
    with fresh_database(db.postgres, "chain_target") as target:
        done = run_cli("restore", str(tmp_path / "inc2"), target.dsn, env=clean_env())
        assert done.returncode == 0, done.stderr
        assert "applied inc0" in done.stderr and "applied inc2" in done.stderr
        assert ", then 3 increments applied (" in done.stdout, done.stdout
        assert table_digests(target.dsn) == table_digests(db.dsn)
        assert target.fetchval("SELECT last_value FROM public.counter") == db.fetchval(
            "SELECT last_value FROM public.counter"
        )


def forge_changes(backup: Path, table: str, lines: list[bytes]) -> None:
    """Replace ``table``'s change file in the increment ``backup`` with ``lines``, its
    manifest entry and SHA256SUMS made to match (a forged increment)."""
    from tests.helpers import reseal, rewrite_data_file

    path = f"data/{table}-forged.ndjson.zst"
    forged: dict[str, Any] = {"path": path, "rows": len(lines), "pages": None}
    forged.update(longest_line=None, fingerprint=None)
    rewrite_data_file(backup, forged, b"".join(line + b"\n" for line in lines))

    def edit(body: dict[str, Any]) -> None:
        entry = next(t for t in body["tables"] if t["name"] == table)
        entry["files"], entry["rows"] = [forged], len(lines)

    reseal(backup, edit)
    sums = (backup / "SHA256SUMS").read_text() + f"{forged['sha256']}  {path}\n"
    (backup / "SHA256SUMS").write_text(sums)


def test_a_change_that_finds_no_row_fails_the_restore_and_is_rolled_back(
    db: Database, tmp_path: Path
) -> None:
    chain(db, tmp_path)
    db.execute("UPDATE public.accounts SET note = 'applied' WHERE id = 3")
    run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    lsn = open_backup(tmp_path / "inc", increments=True).increment.end_lsn  # type: ignore[union-attr]
    forge_changes(
        tmp_path / "inc",
        "by_index",
        [
            b'{"op":"delete","lsn":"%s","xid":1,"n":0,"key":{"u":424242},"row":null,'
            b'"unchanged":[]}' % lsn.encode()
        ],
    )
    with fresh_database(db.postgres, "chain_target") as target:
        done = run_cli("restore", str(tmp_path / "inc"), target.dsn, env=clean_env())
        assert done.returncode == ExitCode.FAILED
        # found while the table's rows load, its changes replayed on them (restore.replay)
        assert 'delete of public.by_index: no row with the key {"u":424242}' in done.stderr
        assert "the chain is damaged" in done.stderr, done.stderr
        assert target.fetchval("SELECT count(*) FROM public.by_index") == 0
    # Applied after the load (a table whose changes are not replayed): the increment is
    # rolled back, the full backup's rows stay.
    with fresh_database(db.postgres, "chain_target") as target, pytest.MonkeyPatch.context() as mp:
        mp.setattr(replay, "REPLAY_BYTES", -1)
        with pytest.raises(RestoreFailed) as failed:
            run(restore, tmp_path / "inc", target.dsn)
        assert 'no row with the key {"u":424242}' in str(failed.value)
        assert "the increment was rolled back" in (failed.value.hint or "")
        assert target.fetchval("SELECT note FROM public.accounts WHERE id = 3") == "n3"


def test_a_role_without_replication_cannot_take_an_increment(
    db: Database, tmp_path: Path, role: tuple[str, str]
) -> None:
    chain(db, tmp_path)
    name, password = role
    db.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {name}")
    db.execute(f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {name}")
    dsn = db.postgres.dsn(db.name, user=name, password=password)
    with pytest.raises(NotReplicable, match="cannot read replication slot") as failure:
        run(dump_increment, dsn, since=tmp_path / "full")
    assert "REPLICATION attribute" in (failure.value.hint or "")
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["full"]


def test_restoring_a_chain_needs_a_superuser_and_says_so_first(
    db: Database, tmp_path: Path, role: tuple[str, str]
) -> None:
    chain(db, tmp_path)
    run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    name, password = role
    with fresh_database(db.postgres, "chain_target") as target:
        target.execute(f"GRANT ALL ON SCHEMA public TO {name}")
        dsn = db.postgres.dsn(target.name, user=name, password=password)
        done = run_cli("restore", str(tmp_path / "inc"), dsn, env=clean_env())
        assert done.returncode == ExitCode.FAILED, done.stderr
        assert "applying a chain's increments needs a superuser" in done.stderr
        assert target.fetchval("SELECT count(*) FROM pg_class WHERE relname = 'accounts'") == 0


def test_restore_to_a_backup_of_the_chain_or_a_wal_position_between(
    db: Database, tmp_path: Path
) -> None:
    """``--to inc0`` is the state at inc0's end; ``--to LSN`` inside inc1 is the state
    when that position was current (every transaction committed before it, none after)."""
    chain(db, tmp_path)
    rng = random.Random(99)
    run(workload, db.dsn, rng, 15)
    at_inc0 = table_digests(db.dsn)
    run(dump_increment, db.dsn, since=tmp_path / "full", name="inc0")
    run(workload, db.dsn, rng, 15)
    middle = db.fetchval("SELECT pg_current_wal_insert_lsn()::text")  # commits are async
    at_middle = table_digests(db.dsn)
    run(workload, db.dsn, rng, 15)
    run(dump_increment, db.dsn, since=tmp_path / "inc0", name="inc1")
    for to, expected in (("inc0", at_inc0), (middle, at_middle)):
        with fresh_database(db.postgres, "chain_target") as target:
            done = run_cli(
                "restore", str(tmp_path / "inc1"), target.dsn, "--to", to, env=clean_env()
            )
            assert done.returncode == 0, done.stderr
            assert table_digests(target.dsn) == expected, to
    assert at_middle != at_inc0
    refused = run_cli("restore", str(tmp_path / "inc1"), db.dsn, "--to", "0/1", env=clean_env())
    assert refused.returncode == ExitCode.USAGE
    assert "is outside the chain" in refused.stderr


def test_verify_of_an_increment_checks_its_whole_chain(db: Database, tmp_path: Path) -> None:
    chain(db, tmp_path)
    db.execute("UPDATE public.accounts SET note = 'x' WHERE id = 1")
    run(dump_increment, db.dsn, since=tmp_path / "full", name="inc0")
    run(dump_increment, db.dsn, since=tmp_path / "inc0", name="inc1")
    done = run_cli("verify", str(tmp_path / "inc1"), env=clean_env())
    assert done.returncode == 0 and "(a chain of 3 backups)" in done.stdout, done.stdout
    # A byte of the full backup's rows damaged: named by its backup.
    damaged = sorted((tmp_path / "full" / "data").glob("public.accounts-*"))[0]
    raw = bytearray(damaged.read_bytes())
    raw[-5] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    done = run_cli("verify", str(tmp_path / "inc1"), env=clean_env())
    assert done.returncode == ExitCode.VERIFY
    assert f"full/data/{damaged.name}" in done.stderr
    # A link missing: the chain cannot be read, and the restore says so before anything.
    (tmp_path / "inc0" / "manifest.json").unlink()
    done = run_cli("verify", str(tmp_path / "inc1"), env=clean_env())
    assert done.returncode == ExitCode.VERIFY
    assert "follows inc0, which cannot be read" in done.stderr


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


def test_an_encrypted_chain_in_object_storage(s3: S3Server, db: Database, tmp_path: Path) -> None:
    """A full backup and an increment written straight to a bucket, encrypted; the chain
    is found there by name, verified and restored with the key."""
    from pyrage import x25519

    db.execute(SCHEMA)
    identity = x25519.Identity.generate()
    key = tmp_path / "key.txt"
    key.write_text(f"{identity}\n")
    public = str(identity.to_public())
    env = cli_env(s3)
    prefix = f"s3://{BUCKET}/chains"
    full = run_cli(
        "dump", db.dsn, "-o", prefix, "--slot", slot_name(), "--name", "full",
        "--encrypt-to", public, env=env,
    )  # fmt: skip
    assert full.returncode == 0, full.stderr
    run(workload, db.dsn, random.Random(3), 20)
    inc = run_cli(
        "dump", db.dsn, "--since", f"{prefix}/full", "--encrypt-to", public, "--name", "inc",
        env=env,
    )  # fmt: skip
    assert inc.returncode == 0, inc.stderr
    assert inc.stdout.strip() == f"{prefix}/inc"
    checked = run_cli("verify", f"{prefix}/inc", "--identity", str(key), env=env)
    assert checked.returncode == 0 and "(a chain of 2 backups)" in checked.stdout
    with fresh_database(db.postgres, "chain_target") as target:
        done = run_cli("restore", f"{prefix}/inc", target.dsn, "--identity", str(key), env=env)
        assert done.returncode == 0, done.stderr
        assert table_digests(target.dsn) == table_digests(db.dsn)


def test_an_increment_killed_at_any_point_reruns_to_the_same_files(
    db: Database, tmp_path: Path
) -> None:
    """SIGKILL while the slot is read (before anything is written), and while the files
    are written: no backup looks complete, the slot has not moved, and the next run
    writes the files a run that was never killed writes, byte for byte."""
    import signal
    import subprocess
    import sys
    import time

    slot = chain(db, tmp_path)
    db.execute(
        "INSERT INTO public.by_index SELECT g, repeat('w', 50)"
        " FROM generate_series(1000, 150000) g;"
        "UPDATE public.accounts SET note = 'killed' WHERE id <= 20"
    )
    start = slot_position(db, slot)
    reference = run(dump_increment, db.dsn, since=tmp_path / "full", name="ref", advance_slot=False)

    def started(name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "asyncsnap", "dump", db.dsn, "--since",
             str(tmp_path / "full"), "--name", name],
            env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    early = started("early")
    time.sleep(0.3)  # connected, checking and reading: nothing claimed yet, or just now
    early.send_signal(signal.SIGKILL)
    early.wait()
    writing = started("writing")
    deadline = time.monotonic() + 60
    claimed = tmp_path / "writing.partial"
    while not claimed.is_dir() and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.2)  # claimed: the changes are being read, encoded and written
    writing.send_signal(signal.SIGKILL)
    writing.wait()
    assert claimed.is_dir(), "the run ended before it was killed"
    for name in ("early", "writing"):
        assert not (tmp_path / name).exists()  # nothing complete-looking
    assert slot_position(db, slot) == start
    again = run_cli(
        "dump", db.dsn, "--since", str(tmp_path / "full"), "--name", "again", env=clean_env()
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "SHA256SUMS").read_bytes() == (
        tmp_path / "ref" / "SHA256SUMS"
    ).read_bytes()
    assert reference.changes > 140_000


def test_a_block_of_updates_by_primary_key_in_one_statement_ends_as_one_by_one(
    db: Database, tmp_path: Path
) -> None:
    """The restore's one-statement path for a block of updates by primary key: the
    result is the source's, also when a unique column's values move between rows in an
    order a single statement may trip over (it then goes one change at a time), and a row
    that is not there is named all the same."""
    db.execute(
        "CREATE TABLE public.uniq (id int PRIMARY KEY, code text UNIQUE, v text);"
        "INSERT INTO public.uniq SELECT g, 'c' || g, 'v' FROM generate_series(1, 3000) g"
    )
    slot = slot_name()
    run(dump, db.dsn, output=tmp_path, slot=slot, name="full")
    db.execute("UPDATE public.uniq SET v = v || 'x' WHERE id % 3 = 0")
    db.execute("UPDATE public.uniq SET code = 'moved' WHERE id = 1")
    db.execute("UPDATE public.uniq SET code = 'c1' WHERE id = 2")  # 1's old code
    run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    with fresh_database(db.postgres, "chain_target") as target:
        done = run_cli("restore", str(tmp_path / "inc"), target.dsn, env=clean_env())
        assert done.returncode == 0, done.stderr
        assert table_digests(target.dsn) == table_digests(db.dsn)
    lsn = open_backup(tmp_path / "inc", increments=True).increment.end_lsn  # type: ignore[union-attr]
    forge_changes(
        tmp_path / "inc",
        "uniq",
        [
            b'{"op":"update","lsn":"%s","xid":1,"n":%d,"key":{"id":%d},'
            b'"row":{"id":%d,"code":"k%d","v":"w"},"unchanged":[]}' % (lsn.encode(), i, i, i, i)
            for i in (5, 6, 9999, 7)
        ],
    )
    with fresh_database(db.postgres, "chain_target") as target:
        done = run_cli("restore", str(tmp_path / "inc"), target.dsn, env=clean_env())
        assert done.returncode == ExitCode.FAILED
        assert 'no row with the key {"id":9999}' in done.stderr


def test_small_batches_write_the_same_lines(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changes encoded a few at a time, per table and across tables (the bounds that
    keep a huge transaction's memory flat), give the same files as one batch."""
    import asyncsnap.increment as increment_module

    slot = chain(db, tmp_path)
    run(workload, db.dsn, random.Random(11), 30)
    whole = run(dump_increment, db.dsn, since=tmp_path / "full", name="whole", advance_slot=False)
    monkeypatch.setattr(increment_module, "ENCODE_BATCH", 2)
    monkeypatch.setattr(increment_module, "PENDING_LIMIT", 3)
    small = run(dump_increment, db.dsn, since=tmp_path / "full", name="small")
    assert small.changes == whole.changes > 50
    assert (tmp_path / "small" / "SHA256SUMS").read_bytes() == (
        tmp_path / "whole" / "SHA256SUMS"
    ).read_bytes()
    assert slot_position(db, slot) == small.end_lsn


def test_the_readme_crontab_of_a_chain_gives_a_restorable_chain(
    db: Database, tmp_path: Path
) -> None:
    """README's nightly full + hourly increment lines, run as cron would run them (its
    ``\\%`` is cron's escape): a full backup and two increments, verified as a chain and
    restored equal to the source."""
    import shlex
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```cron")[1:]]
    (block,) = [b for b in blocks if "--since" in b]
    nightly, hourly = (ln.split(None, 5)[5] for ln in block.splitlines() if ln[:1].isdigit())
    backups = tmp_path / "backups"
    backups.mkdir()

    def as_run(line: str) -> str:
        return (
            line.replace("\\%", "%")
            .replace("/backups/shop", str(backups))
            .replace("asyncsnap ", f"{shlex.quote(sys.executable)} -m asyncsnap ")
            .replace("-d shop", f"-d {shlex.quote(db.dsn)}")
        )

    def cron(line: str) -> None:
        done = subprocess.run(
            as_run(line), shell=True, env=clean_env(), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr

    db.execute(SCHEMA)
    cron(nightly)
    rng = random.Random(5)
    for _ in range(2):
        run(workload, db.dsn, rng, 10)
        cron(hourly)
    chain_end = sorted(p.name for p in backups.iterdir() if p.name.startswith("backup_"))[-1]
    checked = run_cli("verify", str(backups / chain_end), env=clean_env())
    assert checked.returncode == 0 and "(a chain of 3 backups)" in checked.stdout
    with fresh_database(db.postgres, "chain_target") as target:
        done = run_cli("restore", str(backups / chain_end), target.dsn, env=clean_env())
        assert done.returncode == 0, done.stderr
        assert table_digests(target.dsn) == table_digests(db.dsn)


@pytest.mark.parametrize("past_the_boundary", [False, True], ids=["before", "past"])
def test_a_slot_moved_by_another_run_during_the_read_fails_the_increment(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, past_the_boundary: bool
) -> None:
    """Another run advances the slot between this one's check and its read (past a
    change this read then never sees, or past the boundary too): the increment fails,
    nothing is written."""
    import asyncsnap.increment as increment_module
    from asyncsnap.changes import advance

    slot = chain(db, tmp_path)
    db.execute("UPDATE public.accounts SET note = 'lost?' WHERE id = 4")
    real_mark = increment_module.emit_mark  # type: ignore[attr-defined]

    async def mark_then_moved(conn: asyncpg.Connection, content: bytes) -> int:
        before = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")  # past the UPDATE
        position = await real_mark(conn, content)
        other = await asyncpg.connect(db.dsn)
        try:  # as a concurrent run would
            await advance(other, slot, position if past_the_boundary else before)
        finally:
            await other.close()
        return position

    monkeypatch.setattr(increment_module, "emit_mark", mark_then_moved)
    with pytest.raises(NotReplicable, match="was moved past the backup's end"):
        run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["full"]


@pytest.mark.parametrize(
    "alter, says",
    [
        ("ALTER PUBLICATION {slot} SET (publish = 'insert')", "does not publish every"),
        (
            "ALTER PUBLICATION {slot} SET (publish_via_partition_root = true)",
            "publish_via_partition_root",
        ),
        (
            "ALTER PUBLICATION {slot} SET TABLE public.accounts WHERE (id > 5), public.dupes,"
            ' public.by_index, public."Odd ""name""", public.parts_eu, public.parts_us,'
            " public.pk_and_index, public.always_id",
            "filters the rows or columns it publishes of public.accounts",
        ),
    ],
)
def test_a_publication_changed_after_the_full_backup_fails_the_increment(
    db: Database, tmp_path: Path, alter: str, says: str
) -> None:
    slot = chain(db, tmp_path)
    db.execute(alter.format(slot=slot))
    with pytest.raises(NotReplicable, match=says):
        run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["full"]


def test_constraints_and_types_a_restore_must_respect(db: Database, tmp_path: Path) -> None:
    """An exclusion constraint a single statement's order trips; a deferrable unique
    constraint the source checked at its statement's end; a primary key whose equality
    is an extension's operator (ltree); a TRUNCATE of two tables at once."""
    db.execute(
        "CREATE EXTENSION ltree;"
        "CREATE TABLE public.r (id int PRIMARY KEY, d int4range,"
        " EXCLUDE USING gist (d WITH &&));"
        "INSERT INTO public.r VALUES (1, '[1,2)'), (2, '[3,4)');"
        "CREATE TABLE public.s (id int PRIMARY KEY,"
        " pos int UNIQUE DEFERRABLE INITIALLY IMMEDIATE);"
        "INSERT INTO public.s VALUES (1, 1), (2, 2);"
        "CREATE TABLE public.tree (path ltree PRIMARY KEY, v text);"
        "INSERT INTO public.tree VALUES ('a.b', 'x'), ('a.c', 'y');"
        "CREATE TABLE public.t1 (id int PRIMARY KEY); CREATE TABLE public.t2 (id int PRIMARY KEY);"
        "INSERT INTO public.t1 VALUES (1); INSERT INTO public.t2 VALUES (1);"
    )
    run(dump, db.dsn, output=tmp_path, slot=slot_name(), name="full")
    db.execute("UPDATE public.r SET d = '[5,6)' WHERE id = 2")
    db.execute("UPDATE public.r SET d = '[3,4)' WHERE id = 1")
    db.execute("UPDATE public.s SET pos = 3 - pos")
    db.execute("UPDATE public.tree SET v = 'z' WHERE path = 'a.b'")
    db.execute("DELETE FROM public.tree WHERE path = 'a.c'")
    db.execute("TRUNCATE public.t1, public.t2; INSERT INTO public.t2 VALUES (2)")
    result = run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    inc = open_backup(tmp_path / "inc", increments=True)
    found = {t.name: [parse(x) for f in t.files for x in lines(inc, f.path)] for t in inc.tables}
    truncates = [
        (c["n"], c["lsn"]) for name in ("t1", "t2") for c in found[name] if c["op"] == "truncate"
    ]
    assert len(truncates) == 2 and len(set(truncates)) == 2  # a line each, numbered in turn
    assert result.changes == sum(len(v) for v in found.values())
    transactions = [parse(x) for x in lines(inc, inc.increment.transactions_file.path)]  # type: ignore[union-attr]
    assert sum(int(t["changes"]) for t in transactions) == result.changes
    with fresh_database(db.postgres, "chain_target") as target:
        done = run_cli("restore", str(tmp_path / "inc"), target.dsn, env=clean_env())
        assert done.returncode == 0, done.stderr
        assert table_digests(target.dsn) == table_digests(db.dsn)


def test_a_parent_pruned_while_its_increment_is_written_leaves_no_orphan(
    s3: S3Server, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a store a prune waits for no lock of a running increment: when it removes the
    parent meanwhile (here between the read of the slot and the seal), the increment
    fails naming it, writes no manifest and leaves no object, and the slot stays."""
    from asyncsnap import increment
    from asyncsnap.storage.prefix import remove_backup
    from asyncsnap.storage.s3 import S3Store, StoreUrl

    for variable, value in s3.env().items():
        monkeypatch.setenv(variable, value)
    db.execute(SCHEMA)
    prefix = f"s3://{BUCKET}/pruned"
    slot = slot_name()
    run(dump, db.dsn, output=prefix, slot=slot, name="full")
    db.execute("UPDATE public.accounts SET note = 'after' WHERE id <= 5")
    start = slot_position(db, slot)
    store = S3Store(StoreUrl.parse(prefix))
    sequences = increment._IncrementRun._sequences

    async def pruned_meanwhile(self: Any, conn: Any, listed: Any) -> Any:
        await anyio.to_thread.run_sync(remove_backup, store, "full")
        return await sequences(self, conn, listed)

    monkeypatch.setattr(increment._IncrementRun, "_sequences", pruned_meanwhile)
    with pytest.raises(ChainBroken, match="full was removed while this increment was written"):
        run(dump_increment, db.dsn, since=f"{prefix}/full", name="inc")
    assert [o.key for o in store.objects("inc")] == []
    assert slot_position(db, slot) == start
