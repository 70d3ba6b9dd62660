"""Restoring a chain applies each increment's runs of inserts, updates and deletes in one
statement each where that ends as the changes one by one would (``restore/chain.py``).

The oracle is SQL on the same data: after random bulk workloads drawn by hypothesis
(statements that change many rows at once, so the runs are long; keys that change, also
to values their type or collation calls equal; unique values moving between rows; rows
deleted and inserted again; TOASTed values left alone; rolled-back transactions;
partitions), the restored chain's tables hold exactly the source's rows, as the server
writes them (``row::text``, which keeps a numeric's scale and a key's case)."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncsnap.api import restore
from asyncsnap.dump import dump
from asyncsnap.increment import dump_increment
from asyncsnap.restore import replay
from asyncsnap.restore.chain import SHORTEST_RUN, segments
from tests.conftest import Database, fresh_database
from tests.test_increment import forge_changes, run, slot_name, table_digests

TABLES = ["num", "pair", "jk", "ci", "parts", "perm"]

SCHEMA = """
CREATE COLLATION public.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE public.num (id numeric PRIMARY KEY, u int UNIQUE, n int, v text, big text);
ALTER TABLE public.num ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE public.pair (a int, b text, n int, v float8, PRIMARY KEY (a, b));
CREATE TABLE public.jk (k jsonb PRIMARY KEY, n int, v text);
CREATE TABLE public.ci (k text COLLATE public.ci PRIMARY KEY, n int, v text);
CREATE TABLE public.parts (id int, region text, n int, v text, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE public.parts_eu PARTITION OF public.parts FOR VALUES IN ('eu');
CREATE TABLE public.parts_us PARTITION OF public.parts FOR VALUES IN ('us');
-- keys that pairs of rows trade, with TOASTed values (a replica identity cannot be
-- deferrable: the trade takes three statements)
CREATE TABLE public.perm (id int PRIMARY KEY, n int, v text, big text);
ALTER TABLE public.perm ALTER COLUMN big SET STORAGE EXTERNAL;
"""

RESET = """
TRUNCATE public.num, public.pair, public.jk, public.ci, public.parts, public.perm;
INSERT INTO public.num SELECT g / 2.0, g, g, 'v' || g, repeat(md5(g::text), 100)
    FROM generate_series(1, 80) g;
INSERT INTO public.pair SELECT g % 9, 'b' || g, g, g * 0.1 FROM generate_series(1, 80) g;
INSERT INTO public.jk SELECT jsonb_build_object('id', g, 's', 'x' || g), g, 'v'
    FROM generate_series(1, 80) g;
INSERT INTO public.ci SELECT 'key' || g, g, 'v' FROM generate_series(1, 80) g;
INSERT INTO public.parts SELECT g, CASE WHEN g % 3 = 0 THEN 'eu' ELSE 'us' END, g, 'p'
    FROM generate_series(1, 80) g;
INSERT INTO public.perm SELECT g, g, 'v', repeat(md5(g::text), 100) FROM generate_series(1, 80) g;
"""

# Statements that change keys, each as the table's own SQL (``{w}``: which rows).
KEY_CHANGES = {
    "num": [
        "UPDATE public.num SET id = id + 1000 WHERE {w}",
        "UPDATE public.num SET id = round(id, 3) WHERE {w}",  # the same number, 3 digits
        "UPDATE public.num SET id = trunc(id) WHERE {w}",  # may collide: rolled back
    ],
    "pair": [
        "UPDATE public.pair SET b = upper(b) WHERE {w}",
        "UPDATE public.pair SET a = a + 1 WHERE {w}",  # may collide
    ],
    "jk": [
        "UPDATE public.jk SET k = k || '{{\"moved\": true}}' WHERE {w}",
        # the same jsonb written another way: equal, and the same bytes
        "UPDATE public.jk SET k = jsonb_build_object('s', k->'s', 'id', k->'id') WHERE {w}",
    ],
    "ci": [
        "UPDATE public.ci SET k = upper(k) WHERE {w}",  # equal under the collation
        "UPDATE public.ci SET k = k || 'z' WHERE {w}",
    ],
    "parts": [
        "UPDATE public.parts SET region = CASE region WHEN 'eu' THEN 'us' ELSE 'eu' END"
        " WHERE {w}",  # rows move between partitions
        "UPDATE public.parts SET id = id + 500 WHERE {w}",
    ],
    "perm": [
        # pairs of rows trade keys, their TOASTed values staying with their rows
        "UPDATE public.perm SET id = -id WHERE id % 2 = 0 AND id - 1 IN"
        " (SELECT id FROM public.perm WHERE {w});"
        " UPDATE public.perm SET id = id + 1, v = v || 'x' WHERE id > 0 AND -(id + 1) IN"
        " (SELECT id FROM public.perm);"
        " UPDATE public.perm SET id = -id - 1 WHERE id < 0",
        "UPDATE public.perm SET id = id + 1 WHERE {w}",  # may collide
    ],
}
INSERTS = {
    "num": "INSERT INTO public.num SELECT g + 0.25, g + 100000, g, 'new', repeat('b', 3000)"
    " FROM generate_series($1::int, $1::int + $2::int - 1) g",
    "pair": "INSERT INTO public.pair SELECT g, 'new', g, -0.0"
    " FROM generate_series($1::int, $1::int + $2::int - 1) g",
    "jk": "INSERT INTO public.jk SELECT jsonb_build_object('new', g), g, 'new'"
    " FROM generate_series($1::int, $1::int + $2::int - 1) g",
    "ci": "INSERT INTO public.ci SELECT 'New' || g, g, 'new'"
    " FROM generate_series($1::int, $1::int + $2::int - 1) g",
    "parts": "INSERT INTO public.parts SELECT g, 'eu', g, 'new'"
    " FROM generate_series($1::int, $1::int + $2::int - 1) g",
    "perm": "INSERT INTO public.perm SELECT g, g, 'new', repeat('p', 3000)"
    " FROM generate_series($1::int, $1::int + $2::int - 1) g",
}
UPDATES = {
    "num": "UPDATE public.num SET v = v || 'x', n = n + 1 WHERE {w}",  # big left: unchanged
    "pair": "UPDATE public.pair SET v = v * -1, n = n + 1 WHERE {w}",
    "jk": "UPDATE public.jk SET v = v || 'x', n = n + 1 WHERE {w}",
    "ci": "UPDATE public.ci SET v = v || 'x', n = n + 1 WHERE {w}",
    "parts": "UPDATE public.parts SET v = v || 'x', n = n + 1 WHERE {w}",
    "perm": "UPDATE public.perm SET v = v || 'x', n = n + 1 WHERE {w}",
}

step = st.tuples(
    st.sampled_from(
        [
            "update",
            "update",
            "delete",
            "insert",
            "key",
            "toast",
            "unique",
            "twice",
            "reinsert",
            "interleave",
            "rollback",
            "truncate",
        ]
    ),
    st.sampled_from(TABLES),
    st.integers(1, 4),  # modulus of the rows chosen
    st.integers(0, 3),  # remainder
    st.integers(0, 2),  # which key change
)


async def _workload(dsn: str, steps: list[tuple[str, str, int, int, int]]) -> None:
    conn = await asyncpg.connect(dsn)
    fresh = 1_000_000
    try:
        for kind, table, m, r, which in steps:
            w = f"n % {m} = {r % m}"
            fresh += 1000
            try:
                async with conn.transaction():
                    if kind == "update":
                        await conn.execute(UPDATES[table].format(w=w))
                    elif kind == "delete":
                        await conn.execute(f"DELETE FROM public.{table} WHERE {w}")
                    elif kind == "insert":
                        await conn.execute(INSERTS[table], fresh, 40 * m)
                    elif kind == "key":
                        sqls = KEY_CHANGES[table]
                        await conn.execute(sqls[which % len(sqls)].format(w=w))
                    elif kind == "toast":
                        await conn.execute(
                            f"UPDATE public.num SET big = repeat(md5(v), 90 + $1::int) WHERE {w}",
                            which,
                        )
                    elif kind == "unique":  # values of a unique column move between rows
                        await conn.execute(f"UPDATE public.num SET u = u + {m} WHERE {w} AND u > 0")
                    elif kind == "twice":  # each row changed twice in one transaction
                        await conn.execute(UPDATES[table].format(w=w))
                        await conn.execute(UPDATES[table].format(w=w))
                    elif kind == "reinsert":  # deleted, then the same keys again
                        await conn.execute(
                            "CREATE TEMP TABLE gone ON COMMIT DROP AS"
                            f" SELECT * FROM public.{table} WHERE {w}"
                        )
                        await conn.execute(f"DELETE FROM public.{table} WHERE {w}")
                        await conn.execute(f"INSERT INTO public.{table} SELECT * FROM gone")
                    elif kind == "interleave":  # short runs of every kind, one after another
                        for i in range(12):
                            await conn.execute(INSERTS[table], fresh + i, 1)
                            await conn.execute(
                                UPDATES[table].format(w=f"n = {fresh + i} OR n % 17 = {i}")
                            )
                            await conn.execute(f"DELETE FROM public.{table} WHERE n = {i * 7}")
                    elif kind == "rollback":
                        await conn.execute(UPDATES[table].format(w="true"))
                        raise _RolledBack
                    elif kind == "truncate":
                        await conn.execute(f"TRUNCATE public.{table}")
                        await conn.execute(INSERTS[table], fresh, 40)
            except (_RolledBack, asyncpg.UniqueViolationError):
                pass  # nothing of it committed (a key change may collide at the source)
    finally:
        await conn.close()


class _RolledBack(Exception):
    pass


@pytest.fixture
def icu_db(db: Database) -> Database:
    # PostgreSQL's Debian and embedded builds have ICU (a nondeterministic collation
    # makes keys that differ by case equal).
    assert db.fetchval("SELECT count(*) FROM pg_collation WHERE collprovider = 'i'") > 0
    db.execute(SCHEMA)
    return db


@settings(
    max_examples=16,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(step, min_size=1, max_size=6), replayed=st.booleans())
def test_a_restored_chain_of_bulk_changes_is_the_source(
    icu_db: Database, tmp_path: Path, steps: list[tuple[str, str, int, int, int]], replayed: bool
) -> None:
    """Either way a table's changes go: replayed on its lines as they load, or applied
    on the server after the load."""
    db = icu_db
    db.execute(RESET)
    out = tmp_path / uuid.uuid4().hex[:8]
    slot = slot_name()
    try:
        run(dump, db.dsn, output=out, slot=slot, name="full")
        run(_workload, db.dsn, steps)
        run(dump_increment, db.dsn, since=out / "full", name="inc")
        with (
            fresh_database(db.postgres, "chain_apply") as target,
            pytest.MonkeyPatch.context() as mp,
        ):
            if not replayed:
                mp.setattr(replay, "REPLAY_BYTES", -1)
            run(restore, out / "inc", target.dsn, jobs=2)
            assert table_digests(target.dsn) == table_digests(db.dsn), (steps, replayed)
    finally:
        db.execute("SELECT pg_drop_replication_slot($1)", slot)


def test_a_run_of_updates_by_key_is_one_statement(
    icu_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The long run of updates is applied by one statement, in a subtransaction of its
    own (its rows' xmin is not the transaction's), while a short run goes one change at a
    time (its rows' xmin is the transaction's); both end as the source."""
    monkeypatch.setattr(replay, "REPLAY_BYTES", -1)  # applied after the load
    db = icu_db
    db.execute(RESET)
    slot = slot_name()
    run(dump, db.dsn, output=tmp_path, slot=slot, name="full")
    db.execute(
        "BEGIN; UPDATE public.num SET v = 'short' WHERE n <= 3;"
        " INSERT INTO public.num (id, u, n, v) VALUES (-1, -1, -1, 'short');"
        " UPDATE public.num SET v = 'long' WHERE n > 3; COMMIT"
    )
    run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    with fresh_database(db.postgres, "chain_apply") as target:
        run(restore, tmp_path / "inc", target.dsn, jobs=2)
        assert table_digests(target.dsn) == table_digests(db.dsn)
        xmins = {
            r["v"]: r["xmins"]
            for r in target.fetch(
                "SELECT v, count(DISTINCT xmin::text) AS xmins FROM public.num GROUP BY v"
            )
        }
        assert xmins == {"short": 1, "long": 1}
        apart = target.fetchval(
            "SELECT count(DISTINCT xmin::text) FROM public.num WHERE v IN ('short', 'long')"
        )
        assert apart == 2  # the long run's statement ran in its own subtransaction
    db.execute("SELECT pg_drop_replication_slot($1)", slot)


def _line(op: str, i: int, key: int) -> bytes:
    if op == "odd":  # not as asyncsnap writes a line
        return b'{"n":%d,"op":"update"}\n' % i
    return (
        b'{"op":"%s","lsn":"0/1","xid":1,"n":%d,"key":{"id":%d},"row":{"id":%d},"unchanged":[]}\n'
        % (
            op.encode(),
            i,
            key,
            key,
        )
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["insert", "update", "delete", "truncate", "odd"]),
            st.integers(0, 2000),
        ),
        max_size=200,
    ),
    st.integers(0, 199),
)
def test_segments_keep_every_line_in_order_and_name_only_long_runs(
    ops: list[tuple[str, int]], unique_from: int
) -> None:
    # lines from ``unique_from`` on name keys no other line names
    block = b"".join(
        _line(op, i, key if i < unique_from else 10_000 + i) for i, (op, key) in enumerate(ops)
    )
    cut = segments(block)
    assert b"".join(part for _, part in cut) == block
    for kind, part in cut:
        lines = part.splitlines()
        if kind != "mixed":
            assert len(lines) >= SHORTEST_RUN or len(cut) == 1
            assert all(line.startswith(b'{"op":"%s"' % kind.encode()) for line in lines)
        if kind == "update":  # a run of updates that names a row twice is not tried whole
            keys = [line.split(b'"key":')[1].split(b',"row"')[0] for line in lines]
            assert len(set(keys)) == len(keys)
    # neighbours are never both mixed, nor both of one kind
    assert all(a[0] != b[0] for a, b in itertools.pairwise(cut))
    # and a long run of updates of distinct rows is always tried whole
    tail = ops[unique_from:]
    alone = not 0 < unique_from <= len(ops) or ops[unique_from - 1][0] != "update"
    if alone and len(tail) >= SHORTEST_RUN and all(op == "update" for op, _ in tail):
        assert cut[-1][0] == "update"


@pytest.mark.parametrize(
    "line, says",
    [
        (
            b'{"lsn":"%s","xid":1,"n":0,"key":null,"row":{"id":7,"u":7},"unchanged":[]}',
            "unknown op",
        ),
        (b'{"op":null,"lsn":"%s","row":{"id":7,"u":7}}', "unknown op"),
        (b'{"op":"insert","lsn":"%s","xid":1,"n":0,"key":null,"unchanged":[]}', "has no row"),
        (b'{"op":"update","lsn":"%s","key":{"id":1},"row":null,"unchanged":[]}', "has no row"),
        (
            b'{"op":"insert","xid":1,"n":0,"key":null,"row":{"id":7},"unchanged":[]}',
            "not a change line",
        ),
        (b'["op","insert"]', "not a change line"),
    ],
)
@pytest.mark.parametrize("replayed", [False, True], ids=["applied", "replayed"])
def test_a_line_that_is_not_a_change_fails_the_restore(
    icu_db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    line: bytes,
    says: str,
    replayed: bool,
) -> None:
    """A line is applied as what it says it is, never guessed from what it lacks (a line
    without an op was applied as an insert, one without a row inserted nulls), whether it
    comes alone or in a long run of inserts. Replayed as the rows load, every such line
    is refused as the table's changes are read, and the table's load is rolled back."""
    if replayed:
        says = "is not a change line"
    else:
        monkeypatch.setattr(replay, "REPLAY_BYTES", -1)
    db = icu_db
    db.execute(RESET)
    slot = slot_name()
    run(dump, db.dsn, output=tmp_path, slot=slot, name="full")
    db.execute("INSERT INTO public.num (id, u, n) VALUES (-1, -1, -1)")
    run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    db.execute("SELECT pg_drop_replication_slot($1)", slot)
    inc = tmp_path / "inc"
    lsn = Path(inc / "manifest.json").read_text().split('"end_lsn": "')[1].split('"')[0]
    good = [
        b'{"op":"insert","lsn":"%s","xid":1,"n":%d,"key":null,'
        b'"row":{"id":%d,"u":%d,"n":null,"v":null,"big":null},"unchanged":[]}'
        % (lsn.encode(), i, 5000 + i, 5000 + i)
        for i in range(SHORTEST_RUN * 2)
    ]
    bad = line.replace(b"%s", lsn.encode())
    # alone, and inside a long run of inserts (a line starting as an insert's does is
    # taken for one by the client: the server's one statement must refuse it too)
    for lines in ([bad], [*good, bad, *good]):
        forge_changes(inc, "num", lines)
        with fresh_database(db.postgres, "chain_apply") as target:
            with pytest.raises(Exception) as failed:
                run(restore, inc, target.dsn, jobs=2)
            assert says in str(failed.value), failed.value
            assert target.fetchval("SELECT count(*) FROM public.num WHERE u >= 5000") == 0


# The one-statement paths against the loop they stand in for, on the server: the same
# random segment (forged lines: keys that exist or not, change or not, equal under the
# type or collation but not as text, rows named twice, unique values colliding, TOASTed
# columns left out, lines that are not what they start as) applied once with the kind
# the client would guess and once one change at a time must end in the same rows, or
# fail with the same error.
DIFF_SCHEMA = """
CREATE COLLATION public.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE public.num (id numeric PRIMARY KEY, u int UNIQUE, v text, big text);
CREATE TABLE public.ci (k text COLLATE public.ci PRIMARY KEY, v text);
INSERT INTO public.num SELECT g, g, 'v' || g, repeat('b', g) FROM generate_series(1, 6) g;
INSERT INTO public.ci SELECT k, 'v' FROM unnest(ARRAY['a', 'b', 'c', 'd']) k;
"""
NUM_KEYS = st.sampled_from(["1", "2", "2.0", "3.00", "4", "5", "6", "7", "8", "-0"])
CI_KEYS = st.sampled_from(['"a"', '"A"', '"b"', '"B"', '"c"', '"d"', '"e"', '"E"'])


@st.composite
def change_lines(draw: st.DrawFn, table: str) -> list[bytes]:
    """A run of lines of one op: one that applies (existing keys, each once, the key
    unchanged or changed to an equal value, unique values that do not collide) or one
    drawn at random around it, now and then with a line of another op or a line that is
    not what it starts as."""
    op = draw(st.sampled_from(["insert", "update", "delete"]))
    col = "id" if table == "num" else "k"
    existing = ["1", "2", "3", "4", "5", "6"] if table == "num" else ['"a"', '"b"', '"c"', '"d"']
    equal = {"2": "2.0", "3": "3.00", '"a"': '"A"', '"b"': '"B"'}
    if draw(st.booleans()):  # a run that applies
        if op == "insert":
            count = draw(st.integers(1, 8))
            keys = [f"{10 + i}" if table == "num" else f'"n{i}"' for i in range(count)]
        else:
            keys = draw(st.lists(st.sampled_from(existing), min_size=1, unique=True))
        pairs = [(k, draw(st.sampled_from([k, equal.get(k, k)]))) for k in keys]
        wild = False
        # now and then one line spoils it: its key moved onto another row's, or named
        # twice, or its op another
        spoil = draw(st.sampled_from([None, "moved", "twice", "op"]))
        at = draw(st.integers(0, len(pairs) - 1))
        if spoil == "moved":
            pairs[at] = (pairs[at][0], draw(st.sampled_from(existing)))
        elif spoil == "twice":
            pairs.append(pairs[at])
    else:
        keys_ = NUM_KEYS if table == "num" else CI_KEYS
        count = draw(st.integers(1, 12))
        pairs = [(draw(keys_), draw(keys_)) for _ in range(count)]
        pairs = [(k, r if draw(st.booleans()) else k) for k, r in pairs]
        wild, spoil, at = True, None, -1
    lines = []
    for i, (k, row_key) in enumerate(pairs):
        op_i = op
        if wild and draw(st.integers(0, 9)) == 0:
            op_i = draw(st.sampled_from(["insert", "update", "delete", "truncate"]))
        elif spoil == "op" and i == at:
            op_i = draw(st.sampled_from([o for o in ("insert", "update", "delete") if o != op]))
        if table == "num":
            u = draw(st.integers(1, 30)) if wild else 100 + i
            left_out = draw(st.booleans())
            row = f'{{"id":{row_key},"u":{u},"v":"w{i}"' + ("}" if left_out else ',"big":"n"}')
            unchanged = '["big"]' if left_out and op_i == "update" else "[]"
        else:
            row, unchanged = f'{{"k":{row_key},"v":"w{i}"}}', "[]"
        key = "null" if op_i in ("insert", "truncate") else f'{{"{col}":{k}}}'
        if op_i in ("delete", "truncate"):
            row = "null"
        if wild and draw(st.integers(0, 15)) == 0:  # a line that is not what it starts as
            # (a string that reads as a record literal was applied by the update statement)
            literal = f'"({row_key},{i},w)"' if table == "num" else f'"({row_key[1:-1]},w)"'
            row = draw(st.sampled_from(["null", "[]", "{}", '"x"', '{"id":"x"}', literal]))
        lines.append(
            b'{"op":"%s","lsn":"0/10","xid":1,"n":%d,"key":%s,"row":%s,"unchanged":%s}'
            % (op_i.encode(), i, key.encode(), row.encode(), unchanged.encode())
        )
    return lines


async def _outcomes(
    dsn: str, backup: Path, table: str, cuts: list[tuple[str, list[bytes]]]
) -> list[Any]:
    """The table's rows (as text, sorted) or the error, after the segments ``cuts``
    applied each with the kind given (a guess, maybe wrong), and one change at a time."""
    from asyncsnap.catalog import describe_tables, list_tables
    from asyncsnap.patterns import Selection
    from asyncsnap.restore.chain import _call, apply_function_sql, primary_key_equality
    from asyncsnap.restore.plan import plan_loads
    from asyncsnap.storage.backup import open_backup

    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec(
        "json", schema="pg_catalog", encoder=bytes, decoder=bytes, format="binary"
    )
    try:
        tables = await describe_tables(conn, [t for t in await list_tables(conn) if t.is_table])
        loads = plan_loads(open_backup(backup), tables, Selection(), ignore_missing_columns=False)
        load = next(ld for ld in loads if ld.source.name == table)
        equals = await primary_key_equality(conn, load.target.oid)
        await conn.execute(apply_function_sql("pg_temp.f", load, equals))
        guessed = [(kind, b"".join(line + b"\n" for line in part)) for kind, part in cuts]
        block = b"".join(part for _, part in guessed)
        found: list[Any] = []
        for applied in (guessed, [("mixed", block)]):
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.execute("SET LOCAL session_replication_role = replica")
                for kind, part in applied:
                    await _call(conn, "pg_temp.f", part, None, kind)
                rows = await conn.fetch(f"SELECT t::text AS r FROM public.{table} t ORDER BY 1")
                found.append([r["r"] for r in rows])
            except Exception as exc:  # the error's text names the change: the same
                found.append(f"{type(exc).__name__}: {exc}")
            finally:
                await tx.rollback()
        return found
    finally:
        await conn.close()


@pytest.fixture
def diff_db(db: Database, tmp_path: Path) -> tuple[Database, Path]:
    assert db.fetchval("SELECT count(*) FROM pg_collation WHERE collprovider = 'i'") > 0
    db.execute(DIFF_SCHEMA)
    run(dump, db.dsn, output=tmp_path, name="full")
    return db, tmp_path / "full"


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_one_statement_ends_as_one_change_at_a_time(
    diff_db: tuple[Database, Path], data: st.DataObject
) -> None:
    db, backup = diff_db
    table = data.draw(st.sampled_from(["num", "ci"]))
    runs = data.draw(st.lists(change_lines(table), min_size=1, max_size=4))
    # each run with the kind its first line names, or another (the client's guess is
    # only a guess), whatever its length
    cuts = [
        (data.draw(st.sampled_from([lines[0][7:13].decode(), "insert", "update", "delete"])), lines)
        for lines in runs
    ]
    guessed, one_by_one = run(_outcomes, db.dsn, backup, table, cuts)
    assert guessed == one_by_one, cuts


def test_a_target_without_the_sources_primary_key_goes_one_change_at_a_time(
    diff_db: tuple[Database, Path],
) -> None:
    """Restored with --data-only into a table without the source's primary key, a key may
    find two rows: one statement deleting a run of lines counted one line's two rows for
    another line's none, and succeeded where one change at a time fails."""
    db, backup = diff_db
    db.execute(
        "ALTER TABLE public.num DROP CONSTRAINT num_pkey;"
        " INSERT INTO public.num VALUES (1, 500, 'twin', '')"
    )
    deletes = [
        b'{"op":"delete","lsn":"0/10","xid":1,"n":%d,"key":{"id":%d},"row":null,"unchanged":[]}'
        % (i, key)
        for i, key in enumerate([1, 2, 3, 4, 5, 99])
    ]
    guessed, one_by_one = run(_outcomes, db.dsn, backup, "num", [("delete", deletes)])
    assert guessed == one_by_one
    assert "no row with the key" in one_by_one


def test_an_update_whose_row_is_a_string_fails_as_one_change_at_a_time(
    diff_db: tuple[Database, Path],
) -> None:
    """A row written as a string that reads as a record literal: the update statement
    applied it, where one change at a time refuses the line."""
    db, backup = diff_db
    updates = [
        b'{"op":"update","lsn":"0/10","xid":1,"n":%d,"key":{"id":%d},"row":"(%d,%d,x,)",'
        b'"unchanged":[]}' % (i, i, i, i)
        for i in range(1, 7)
    ]
    guessed, one_by_one = run(_outcomes, db.dsn, backup, "num", [("update", updates)])
    assert guessed == one_by_one
    assert "has no row" in one_by_one
