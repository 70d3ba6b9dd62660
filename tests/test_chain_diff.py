"""``diff`` of two backups of one chain, read from the increments between them.

Two oracles, both on the same data: SQL's own answer (each state's rows as the server
writes them, fetched at the moment each backup is taken, paired by primary key in Python)
and ``diff`` of full backups of the same states (the full-backup path, checked against
SQL by ``test_diff_exact``), whose ``--rows`` files a chain's diff must equal line for
line."""

from __future__ import annotations

import array
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncsnap import _rows
from asyncsnap.analysis.chain_diff import CannotDiffChain
from asyncsnap.analysis.diff import DiffResult, diff
from asyncsnap.chainlines import CHANGE_LINE, Layout, join_object, object_prefixes
from asyncsnap.dump import dump
from asyncsnap.errors import ExitCode, VerificationFailed
from asyncsnap.format import BackupColumn, BackupTable
from asyncsnap.increment import dump_increment
from tests.conftest import Database, clean_env, run_cli
from tests.helpers import decompress, manifest_of, reseal, rewrite_data_file, table_entry
from tests.test_increment import chain, forge_changes, run, slot_name, workload

# Each table's primary key as SQL text (None: compared as whole rows, as diff does for a
# table without a primary key).
KEYS: dict[str, str | None] = {
    "accounts": "id::text",
    "dupes": None,
    "by_index": None,
    'Odd "name"': "id::text",
    "parts_eu": "id::text || ',' || region",
    "parts_us": "id::text || ',' || region",
    "pk_and_index": "id::text",
    "always_id": "id::text",
}

State = dict[str, Any]  # table -> {key: row text} or Counter of row texts


def sql_state(dsn: str) -> State:
    """Every table's rows as the server writes them (``row::text``)."""

    async def read() -> State:
        conn = await asyncpg.connect(dsn)
        try:
            found: State = {}
            for table, key in KEYS.items():
                name = f"public.{_quoted(table)}"
                if key is None:
                    rows = await conn.fetch(f"SELECT t::text AS r FROM {name} t")
                    found[table] = Counter(r["r"] for r in rows)
                else:
                    rows = await conn.fetch(f"SELECT {key} AS k, t::text AS r FROM {name} t")
                    found[table] = {r["k"]: r["r"] for r in rows}
            return found
        finally:
            await conn.close()

    return run(read)  # type: ignore[no-any-return]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"' if not name.isidentifier() else name


def expected(before: State, after: State) -> dict[str, tuple[int, int, int | None, int, int]]:
    """SQL's answer per table: added, removed, changed, rows before, rows after."""
    found: dict[str, tuple[int, int, int | None, int, int]] = {}
    for table, key in KEYS.items():
        a, b = before[table], after[table]
        if key is None:
            added = sum((b - a).values())
            removed = sum((a - b).values())
            found[table] = (added, removed, 0, sum(a.values()), sum(b.values()))
        else:
            changed = sum(1 for k in a.keys() & b.keys() if a[k] != b[k])
            found[table] = (
                len(b.keys() - a.keys()),
                len(a.keys() - b.keys()),
                changed,
                len(a),
                len(b),
            )
    return found


def answered(result: DiffResult) -> dict[str, tuple[int, int, int | None, int, int]]:
    """diff's answer per table (``changed`` 0 for rows compared whole: there is none)."""
    return {
        t.name: (t.added, t.removed, t.changed or 0, t.rows_before or 0, t.rows_after or 0)
        for t in result.tables
        if t.name in KEYS
    }


def without_generated(line: bytes) -> bytes:
    """A ``--rows`` line of the full diff without the generated column ``g`` (a chain's
    diff leaves generated columns out: changes do not carry them)."""
    change = orjson.loads(line)
    for side in ("row", "before", "after"):
        if side in change:
            change[side].pop("g", None)
    return orjson.dumps(change)


@pytest.mark.parametrize("seed", [2512, 7])
def test_a_chain_diff_is_sqls_answer_and_the_full_backups_diff(
    db: Database, tmp_path: Path, seed: int
) -> None:
    """A chain of three increments of a random workload (keys that change, TOASTed values
    left alone, FULL identity with duplicates, TRUNCATE, partitions, a generated column),
    each state also dumped whole: every diff between two of the chain's backups, either
    way round, is SQL's answer and the same rows as the full backups' diff."""
    chain(db, tmp_path)
    states = [sql_state(db.dsn)]
    run(dump, db.dsn, output=tmp_path, name="whole0", with_schema=False)
    rng = random.Random(seed)
    names = ["full"]
    for step in range(3):
        run(workload, db.dsn, rng, 20)
        run(dump_increment, db.dsn, since=tmp_path / names[-1], name=f"inc{step}")
        names.append(f"inc{step}")
        states.append(sql_state(db.dsn))
        run(dump, db.dsn, output=tmp_path, name=f"whole{step + 1}", with_schema=False)
    for i, j in ((0, 1), (0, 3), (1, 3), (3, 1), (2, 0), (2, 2)):
        got = diff(tmp_path / names[i], tmp_path / names[j], rows_dir=tmp_path / f"rows{i}{j}")
        assert answered(got) == expected(states[i], states[j]), (i, j)
        assert got.schema_diff == () and got.large_objects is None
        whole = diff(
            tmp_path / f"whole{i}", tmp_path / f"whole{j}", rows_dir=tmp_path / f"whole{i}{j}"
        )
        assert answered(whole) == answered(got)
        assert [(s.name, s.before, s.after) for s in got.sequences] == [
            (s.name, s.before, s.after) for s in whole.sequences
        ]
        for t in whole.tables:
            if t.rows_file is None:
                continue
            theirs = (tmp_path / f"whole{i}{j}" / t.rows_file).read_bytes().splitlines()
            ours = (tmp_path / f"rows{i}{j}" / t.rows_file).read_bytes().splitlines()
            if t.name == 'Odd "name"':
                theirs = [without_generated(x) for x in theirs]
            assert ours == theirs, (i, j, t.name)
        # a table no change between the two touched is not read
        assert got.not_read >= sum(1 for t in got.tables if t.status == "unchanged") - 2


def test_diff_of_an_increment_from_the_command_line(db: Database, tmp_path: Path) -> None:
    chain(db, tmp_path)
    db.execute("UPDATE public.accounts SET note = 'changed' WHERE id = 3")
    db.execute("DELETE FROM public.dupes WHERE a = 1")
    run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    done = run_cli("diff", str(tmp_path / "full"), str(tmp_path / "inc"), env=clean_env())
    assert done.returncode == 0, done.stderr
    assert "public.accounts: 40 -> 40 rows: 0 added, 0 removed, 1 changed" in done.stdout, (
        done.stdout
    )
    assert "public.dupes: 16 -> 12 rows: 0 added, 4 removed" in done.stdout, done.stdout
    assert "not read (no change between)" in done.stdout
    assert "schema: not compared: backups of one chain" in done.stdout
    # another chain's increment is refused, naming both
    other = tmp_path / "other"
    db.execute("CREATE TABLE public.t (id int PRIMARY KEY)")
    run(dump, db.dsn, output=other, slot=slot_name(), name="full", tables=["public.t"])
    db.execute("INSERT INTO public.t VALUES (1)")
    run(dump_increment, db.dsn, since=other / "full", name="inc")
    done = run_cli("diff", str(tmp_path / "inc"), str(other / "inc"), env=clean_env())
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "are not backups of one chain" in done.stderr
    with pytest.raises(CannotDiffChain):
        diff(tmp_path / "full", other / "inc")


# --------------------------------------------------------------- no server

_NAMES = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=6),
    st.sampled_from([",", "],[", ",1,", "a,b", '"', "\\", ":", "{"]),
)
_STRINGS = st.text(max_size=8) | st.sampled_from(["a,", ":b", '","', "],[", '":', "{}"])
_VALUES = st.one_of(
    st.integers(-(10**20), 10**20).map(lambda n: str(n).encode()),
    _STRINGS.map(lambda s: _rows.json_string(s.encode())),
    st.lists(_STRINGS | st.none(), max_size=3).map(orjson.dumps),
    st.lists(st.lists(_STRINGS, min_size=1, max_size=2), max_size=2).map(orjson.dumps),
    st.just(b"null"),
)


@settings(max_examples=400, deadline=None)
@given(
    columns=st.lists(_NAMES, min_size=1, max_size=5, unique=True),
    data=st.data(),
)
def test_a_lines_identity_is_cut_exactly_whatever_its_names_and_values(
    columns: list[str], data: Any
) -> None:
    """Objects are read by the JSON grammar: each line's values and identity come out
    byte for byte, whatever the names and values hold (quotes, commas, colons, brackets,
    strings that end in a comma next to strings that begin with a colon, names such as
    ``,`` that such arrays spell); the engine's cut agrees wherever it is used (names
    that cannot be spelled across an array's strings)."""
    identity = tuple(
        sorted(data.draw(st.sets(st.sampled_from(columns), min_size=1)), key=columns.index)
    )
    table = BackupTable(
        "public",
        "t",
        "table",
        None,
        0,
        tuple(BackupColumn(c, "text", "json", False, None, None) for c in columns),
        (),
    )
    layout = Layout(table)
    rows = data.draw(
        st.lists(
            st.lists(_VALUES, min_size=len(columns), max_size=len(columns)), min_size=1, max_size=5
        )
    )
    lines = [join_object(object_prefixes(columns), row) for row in rows]
    keys = []
    for row, line in zip(rows, lines, strict=True):
        assert layout.values(line, "line") == dict(zip(columns, row, strict=True))
        values = [row[columns.index(c)] for c in identity]
        keys.append(layout.change_key(join_object(object_prefixes(identity), values)))
        assert keys[-1] == b"\0".join(values)
    assert [layout.full_line_key(line) for line in lines] == keys
    assert [layout.line_key(line) for line in lines] == keys
    # A full backup's lines are picked by their identity natively, by the same grammar:
    # every line of a wanted identity is a candidate (a hash collision may add others,
    # which the caller reads again), in the file's order.
    wanted = data.draw(st.sets(st.sampled_from(keys)))
    picked = _rows.pick_lines(
        b"".join(line + b"\n" for line in lines),
        tuple(layout.all_prefixes),
        tuple(columns.index(c) for c in identity),
        _wanted(wanted),
    ).splitlines()
    assert [p for p in picked if layout.full_line_key(p) in wanted] == [
        line for line, key in zip(lines, keys, strict=True) if key in wanted
    ]


def _wanted(keys: set[bytes]) -> bytes:
    return array.array("Q", sorted({_rows.key_hash(k) for k in keys})).tobytes()


def test_a_name_an_array_can_spell_is_read_by_the_grammar() -> None:
    """A column named ``,`` after an array holding ``"a,"`` then ``":b"``: its prefix
    ``,",":`` occurs inside the array, so a cut at the next column's prefix would read
    ``":b"]`` as its value; the grammar reads the array whole, and the identity right."""
    columns = ["tags", ","]
    table = BackupTable(
        "public",
        "t",
        "table",
        None,
        0,
        tuple(BackupColumn(c, "text[]", "array", False, None, None) for c in columns),
        (),
    )
    layout = Layout(table)
    line = join_object(object_prefixes(columns), [b'["a,",":b"]', b"1"])
    other = join_object(object_prefixes(columns), [b'["a,",":b"]', b"2"])
    key = layout.change_key(join_object(object_prefixes(["tags"]), [b'["a,",":b"]']))
    assert layout.full_line_key(line) == key == b'["a,",":b"]'
    prefixes = tuple(layout.all_prefixes)
    assert _rows.pick_lines(line + b"\n" + other + b"\n", prefixes, (1,), _wanted({b"1"})) == (
        line + b"\n"
    )
    assert _rows.pick_lines(line + b"\n", prefixes, (0,), _wanted({key})) == line + b"\n"


def test_a_full_backup_line_without_the_tables_columns_fails_the_chains_diff(
    db: Database, tmp_path: Path
) -> None:
    """A full backup's line that does not begin with its table's columns (the file and
    the manifest made to match): the chain's diff fails naming the file and the line,
    never reads past it."""
    chain(db, tmp_path)
    db.execute("UPDATE public.accounts SET note = 'x' WHERE id = 1")
    run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    full, inc = tmp_path / "full", tmp_path / "inc"
    (path,) = [f["path"] for f in table_entry(full, "public", "accounts")["files"]]

    def damage(body: dict[str, Any]) -> None:
        (entry,) = next(t for t in body["tables"] if t["name"] == "accounts")["files"]
        lines = decompress(full / path).splitlines(keepends=True)
        lines[2] = b'{"nope":1}\n'
        rewrite_data_file(full, entry, b"".join(lines))

    reseal(full, damage)
    sealed = manifest_of(full)["manifest_sha256"]  # the increment names its parent so
    reseal(inc, lambda body: body["increment"]["parent"].update(manifest_sha256=sealed))
    with pytest.raises(VerificationFailed, match=f"{path}: line 3 is not a line of"):
        diff(full, inc)


@pytest.mark.parametrize(
    "obj",
    [b'{"x","a":1}', b'{"a":1,}', b'{"a":{"b":1}}', b'{"a":1}}', b'{"a" :1}', b'{,"a":1}', b"{"],
)
def test_objects_that_are_not_of_column_values_are_refused(obj: bytes) -> None:
    with pytest.raises(ValueError):
        _rows.json_members(obj)


@pytest.mark.parametrize(
    "line",
    [
        b'{"op":"insert","lsn":"0/1","xid":1,"n":0,"key":null,"row":{"a":"}"},"unchanged":[]}',
        b'{"op":"update","lsn":"0/1","xid":1,"n":0,"key":{"a":"x\\"}"},"row":{"a":1},"unchanged":["b"]}',
        b'{"op":"truncate","lsn":"A/FF","xid":9,"n":3,"key":null,"row":null,"unchanged":[]}',
    ],
)
def test_change_lines_are_cut_at_their_own_keys(line: bytes) -> None:
    assert CHANGE_LINE.fullmatch(line) is not None


@pytest.mark.parametrize(
    "line",
    [
        b'{"op":"insert","lsn":"0/1","xid":1,"n":0,"key":null,"row":{"a":{"b":1}},"unchanged":[]}',
        b'{"op":"upsert","lsn":"0/1","xid":1,"n":0,"key":null,"row":null,"unchanged":[]}',
        b'{"op":"insert","lsn":"0/1","xid":1,"n":0,"key":null,"row":{"a":"x"}',
        b'{"op":"insert","lsn":"0/1","xid":1,"n":0,"key":null,"row":{"a":"x"},"unchanged":[]} ',
    ],
)
def test_lines_that_are_not_change_lines_are_refused(line: bytes) -> None:
    assert CHANGE_LINE.fullmatch(line) is None


HEAD = b'{"op":"%s","lsn":"0/1","xid":1,"n":0,'


@pytest.mark.parametrize(
    "line, says",
    [
        (HEAD % b"delete" + b'"key":null,"row":null,"unchanged":[]}', "does not fit its op"),
        (HEAD % b"insert" + b'"key":{"id":1},"row":null,"unchanged":[]}', "does not fit its op"),
        (HEAD % b"update" + b'"key":{"id":1},"row":{"id":1},"unchanged":[x]}', "unchanged"),
        (HEAD % b"update" + b'"key":{"x","id":1},"row":{"id":1},"unchanged":[]}', "object"),
        (HEAD % b"delete" + b'"key":{"nope":1},"row":null,"unchanged":[]}', "does not have"),
        (HEAD % b"delete" + b'"key":{"id":123456},"row":null,"unchanged":[]}', "does not hold"),
        (HEAD % b"insert" + b'"key":null,"row":{"id":1},"unchanged":[]}', "table's columns"),
        (HEAD % b"insert" + b'"key":null,"row":null,"unchanged":["big"]}', "does not fit"),
        (b'{"op":"delete","lsn":"0/1"}', "not a change line"),
    ],
)
def test_a_forged_change_file_is_refused_as_damaged(
    db: Database, tmp_path: Path, line: bytes, says: str
) -> None:
    """An increment whose change lines do not say what the format says (its checksums made
    to match): one VerificationFailed naming what is wrong, never another exception."""
    chain(db, tmp_path)
    db.execute("UPDATE public.accounts SET note = 'x' WHERE id = 1")
    run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    forge_changes(tmp_path / "inc", "accounts", [line])
    with pytest.raises(VerificationFailed, match=says):
        diff(tmp_path / "full", tmp_path / "inc")


def test_changed_rows_too_long_for_the_engine_go_through_files(
    db: Database, tmp_path: Path
) -> None:
    """A chain's differing lines go to the engine as they are, unless one is longer than
    the engine takes whole (1 MiB): then through scratch files, the long ones as
    stand-ins; the same answer and rows as the full backups' diff."""
    db.execute(
        "CREATE TABLE public.wide (id int PRIMARY KEY, n int, doc text);"
        " INSERT INTO public.wide SELECT g, g, repeat(md5(g::text), 10)"
        " FROM generate_series(1, 50) g"
    )
    run(dump, db.dsn, output=tmp_path, slot=slot_name(), name="full", with_schema=False)
    db.execute(
        "UPDATE public.wide SET doc = repeat(md5(id::text), 50000) WHERE id IN (3, 4);"
        " UPDATE public.wide SET n = -n WHERE id > 40; DELETE FROM public.wide WHERE id = 7"
    )
    run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    run(dump, db.dsn, output=tmp_path, name="end", with_schema=False)
    got = diff(tmp_path / "full", tmp_path / "inc", rows_dir=tmp_path / "rows")
    whole = diff(tmp_path / "full", tmp_path / "end", rows_dir=tmp_path / "whole")
    (ours,) = [t for t in got.tables if t.name == "wide"]
    (theirs,) = [t for t in whole.tables if t.name == "wide"]
    assert (ours.rows_before, ours.rows_after, ours.changed, ours.removed) == (50, 49, 12, 1)
    assert answered(got) == answered(whole)
    assert ours.rows_file is not None and theirs.rows_file is not None
    rows = (tmp_path / "rows" / ours.rows_file).read_bytes()
    assert rows == (tmp_path / "whole" / theirs.rows_file).read_bytes()
    assert max(map(len, rows.splitlines())) > 1 << 20


def test_a_table_without_columns_is_diffed_from_its_changes(db: Database, tmp_path: Path) -> None:
    """A table without columns, REPLICA IDENTITY FULL: a change names its row by the empty
    identity (``"key":{}``), which every line has; one row deleted of five."""
    db.execute(
        "CREATE TABLE public.nocols (); ALTER TABLE public.nocols REPLICA IDENTITY FULL;"
        " INSERT INTO public.nocols SELECT FROM generate_series(1, 5)"
    )
    run(dump, db.dsn, output=tmp_path, slot=slot_name(), name="full")
    db.execute("DELETE FROM public.nocols WHERE ctid = '(0,1)'")
    run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    (table,) = [t for t in diff(tmp_path / "full", tmp_path / "inc").tables if t.name == "nocols"]
    assert (table.status, table.rows_before, table.rows_after, table.removed) == (
        "changed",
        5,
        4,
        1,
    )


def test_a_failure_in_one_file_stops_the_others_being_read(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full backup's files are read two at a time: when one fails (its first line
    damaged here), the file read beside it stops at its next block, instead of being read
    to its end first (a big file or a slow store made the error wait minutes)."""
    import functools

    from asyncsnap.analysis import chain_diff
    from asyncsnap.storage.backup import DataFileReader

    db.execute(
        "CREATE TABLE public.big (id int PRIMARY KEY, pad text);"
        " INSERT INTO public.big SELECT g, repeat('x', 200) FROM generate_series(1, 40000) g"
    )
    run(dump, db.dsn, output=tmp_path, slot=slot_name(), name="full", split_larger_than=1 << 20)
    db.execute("UPDATE public.big SET pad = 'y' WHERE id = 7")
    run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    full, inc = tmp_path / "full", tmp_path / "inc"
    paths = [f["path"] for f in table_entry(full, "public", "big")["files"]]
    assert len(paths) >= 4

    def damage(body: dict[str, Any]) -> None:
        entry = next(t for t in body["tables"] if t["name"] == "big")["files"][0]
        lines = decompress(full / paths[0]).splitlines(keepends=True)
        rewrite_data_file(full, entry, b"".join([b'{"nope":1}\n', *lines[1:]]))

    reseal(full, damage)
    sealed = manifest_of(full)["manifest_sha256"]
    reseal(inc, lambda body: body["increment"]["parent"].update(manifest_sha256=sealed))
    others: list[str] = []

    class Slow(DataFileReader):
        def __next__(self) -> bytes | bytearray:
            if Path(self.backup.path) == full and self.entry.path != paths[0]:
                others.append(self.entry.path)
                time.sleep(0.2)  # a big file, a slow store
            return super().__next__()

    monkeypatch.setattr(chain_diff, "DataFileReader", functools.partial(Slow, block_size=1 << 18))
    with pytest.raises(VerificationFailed, match=f"{paths[0]}: line 1 is not a line of"):
        diff(full, inc)
    assert len(others) <= 2, others  # a block of the file beside it, and maybe one more
