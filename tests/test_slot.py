"""``dump --slot``: a full backup whose snapshot is a logical replication slot's start,
against real servers (the tests' servers run with wal_level = logical).

The central promise: every row committed before the slot's consistent point is in the
backup, and every one committed after it reaches the slot, never both, never neither.
A writer inserts throughout the dump to put commits on both sides of it; the slot's
changes are read back with the server's own SQL interface and decoded
(``asyncsnap.pgoutput``)."""

from __future__ import annotations

import json
import re
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
import zstandard

from asyncsnap import pgoutput
from asyncsnap.dump import dump
from asyncsnap.errors import (
    ExitCode,
    OutputError,
    TimeLimitExceeded,
    UsageError,
    VerificationFailed,
)
from asyncsnap.format import SlotInfo
from asyncsnap.pgoutput import parse_lsn
from asyncsnap.slot import NotReplicable, SlotState, check_followable, slot_state
from asyncsnap.storage.backup import open_backup
from tests.conftest import Database, Postgres, clean_env, execute, run_cli
from tests.helpers import reseal
from throwaway.postgres import throwaway_server

TABLES = """
CREATE TABLE public.events (id bigint PRIMARY KEY, note text);
CREATE TABLE public.wide (k int, payload text);
ALTER TABLE public.wide REPLICA IDENTITY FULL;
ALTER TABLE public.wide ALTER COLUMN payload SET STORAGE EXTERNAL;  -- TOASTed, uncompressed
CREATE TABLE public.parts (id int, region text, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE public.parts_eu PARTITION OF public.parts FOR VALUES IN ('eu');
CREATE TABLE public.parts_us PARTITION OF public.parts FOR VALUES IN ('us');
INSERT INTO public.events SELECT g, 'before ' || g FROM generate_series(1, 200) g;
INSERT INTO public.wide VALUES (1, repeat('x', 5000));
INSERT INTO public.parts VALUES (1, 'eu'), (2, 'us');
"""


def slot_name() -> str:
    return "s_" + uuid.uuid4().hex[:10]


def rows_of(backup: Path, table: str) -> list[dict[str, Any]]:
    rows = []
    for f in sorted((backup / "data").glob(f"public.{table}-*")):
        text = zstandard.ZstdDecompressor().decompress(f.read_bytes(), max_output_size=1 << 26)
        rows += [json.loads(line) for line in text.decode().splitlines()]
    return rows


def run_dump(*args: Any, **kwargs: Any) -> Any:
    return anyio.run(partial(dump, *args, **kwargs), backend="asyncio")


def changes_of(dsn: str, slot: str, publication: str) -> list[pgoutput.Message]:
    return anyio.run(slot_changes, dsn, slot, publication, backend="asyncio")


async def slot_changes(dsn: str, slot: str, publication: str) -> list[pgoutput.Message]:
    """Every change the slot holds, decoded, without consuming them."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,"
            " 'proto_version', '1', 'publication_names', $2)",
            slot,
            publication,
        )
    finally:
        await conn.close()
    return [pgoutput.decode(bytes(r["data"])) for r in rows]


def test_the_backup_holds_exactly_what_the_slot_does_not(db: Database, tmp_path: Path) -> None:
    db.execute(TABLES)
    slot = slot_name()
    inserted: list[int] = []
    stop = anyio.Event()

    async def writer() -> None:
        # One commit after another, through the slot's creation and the whole dump.
        conn = await asyncpg.connect(db.dsn)
        try:
            next_id = 1000
            while not stop.is_set() or len(inserted) < 5:
                await conn.execute(
                    "SET synchronous_commit = on;"  # decoding reads only flushed WAL
                    f" INSERT INTO public.events VALUES ({next_id}, 'during')"
                )
                inserted.append(next_id)
                next_id += 1
                await anyio.sleep(0.002)
        finally:
            await conn.close()

    async def main() -> tuple[Any, int]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            await anyio.sleep(0.1)
            result = await dump(db.dsn, output=tmp_path, name="base", slot=slot, jobs=2)
            count = len(inserted)
            await anyio.sleep(0.1)
            stop.set()
        return result, count

    result, before_stop = anyio.run(main, backend="asyncio")
    assert len(inserted) > before_stop  # commits after the dump's end too

    backup = Path(result.path)
    in_backup = {r["id"] for r in rows_of(backup, "events")}
    changes = changes_of(db.dsn, slot, slot)
    relations = {m.oid: m for m in changes if isinstance(m, pgoutput.Relation)}
    decoded = {
        int(m.new[0])  # type: ignore[arg-type]
        for m in changes
        if isinstance(m, pgoutput.Insert) and relations[m.relation].name == "events"
    }
    everything = set(range(1, 201)) | set(inserted)
    assert in_backup & decoded == set()  # never both
    assert in_backup | decoded == everything  # never neither
    assert decoded and in_backup - set(range(1, 201))  # commits on both sides of the start

    info = open_backup(backup).manifest.slot
    assert info is not None and result.slot == info
    state = _slot_state(db, slot)
    assert info.name == slot and info.publication == slot and info.plugin == "pgoutput"
    assert info.consistent_lsn == state["confirmed_flush_lsn"]
    assert info.system_identifier == state["system_identifier"]
    published = {
        r["tablename"]
        for r in db.fetch("SELECT tablename FROM pg_publication_tables WHERE pubname = $1", slot)
    }
    assert published == {"events", "wide", "parts_eu", "parts_us"}


def _slot_state(db: Database, slot: str) -> dict[str, str]:
    rows = db.fetch(
        "SELECT s.confirmed_flush_lsn::text AS confirmed_flush_lsn,"
        " (SELECT system_identifier::text FROM pg_control_system()) AS system_identifier"
        " FROM pg_replication_slots s WHERE s.slot_name = $1",
        slot,
    )
    assert len(rows) == 1
    return dict(rows[0])


@pytest.mark.versions
def test_slot_backup_on_each_major(postgres: Postgres, db: Database, tmp_path: Path) -> None:
    """The replication command's syntax changed in 15 (options in parentheses); the
    backup of a slot made either way is its start: a change after it is in the slot only."""
    db.execute(TABLES)
    slot = slot_name()
    result = run_dump(db.dsn, output=tmp_path, name="base", slot=slot, with_schema=False)
    # Decoding reads only flushed WAL: these commits wait for their flush.
    db.execute("SET synchronous_commit = on; UPDATE public.wide SET k = 2")
    db.execute("SET synchronous_commit = on; DELETE FROM public.events WHERE id = 1")
    changes = changes_of(db.dsn, slot, slot)
    kinds = [type(m).__name__ for m in changes if not isinstance(m, pgoutput.Relation)]
    assert kinds == ["Begin", "Update", "Commit", "Begin", "Delete", "Commit"]
    update = next(m for m in changes if isinstance(m, pgoutput.Update))
    # REPLICA IDENTITY FULL: the whole old row; the TOASTed payload unchanged, not null
    assert update.old == (b"1", b"x" * 5000) and update.new == (b"2", pgoutput.UNCHANGED)
    assert {r["k"] for r in rows_of(Path(result.path), "wide")} == {1}


def test_what_cannot_carry_a_slot_is_refused_before_anything_is_made(
    db: Database, tmp_path: Path
) -> None:
    db.execute(TABLES + "CREATE TABLE public.nokey (a int); INSERT INTO public.nokey VALUES (1);")
    slot = slot_name()
    with pytest.raises(NotReplicable, match=r"no replica identity on public\.nokey") as caught:
        run_dump(db.dsn, output=tmp_path, slot=slot)
    assert "REPLICA IDENTITY FULL" in (caught.value.hint or "")
    # -T leaves it out, and the rest can carry one
    nothing_made(db, tmp_path, slot)

    db.execute("ALTER TABLE public.nokey REPLICA IDENTITY FULL")
    run_dump(db.dsn, output=tmp_path, name="ok", slot=slot, with_schema=False)
    with pytest.raises(NotReplicable, match=f"replication slot {slot} already exists") as again:
        run_dump(db.dsn, output=tmp_path, name="again", slot=slot, with_schema=False)
    assert f"asyncsnap drop-slot {slot}" in (again.value.hint or "")
    assert not (tmp_path / "again").exists()


def nothing_made(db: Database, output: Path, slot: str) -> None:
    assert not db.fetch("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", slot)
    assert not db.fetch("SELECT 1 FROM pg_publication WHERE pubname = $1", slot)
    assert not output.exists() or not any(output.iterdir())


def test_a_role_without_replication_is_refused(
    db: Database, role: tuple[str, str], tmp_path: Path
) -> None:
    db.execute(TABLES)
    name, password = role
    db.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {name}")
    dsn = db.postgres.dsn(db.name, user=name, password=password)
    slot = slot_name()
    with pytest.raises(NotReplicable, match="no REPLICATION attribute"):
        run_dump(dsn, output=tmp_path, slot=slot)
    nothing_made(db, tmp_path, slot)


def test_a_server_without_logical_decoding_is_refused(tmp_path: Path) -> None:
    with throwaway_server(settings={"wal_level": "replica"}) as server:
        anyio.run(execute, server.dsn(), "CREATE TABLE public.t (id int PRIMARY KEY)")
        run = run_cli(
            "dump", server.dsn(), "-o", str(tmp_path), "--slot", "nightly", env=clean_env()
        )
    assert run.returncode == ExitCode.FAILED
    assert run.stderr.splitlines()[-2:] == [
        "error: the server's wal_level is replica, and a replication slot needs logical",
        "hint: set wal_level = logical in postgresql.conf and restart the server, "
        "or dump without --slot",
    ]
    assert not any(tmp_path.iterdir())


def test_a_failed_dump_drops_the_slot_and_publication_it_made(db: Database, tmp_path: Path) -> None:
    db.execute(TABLES)
    slot = slot_name()
    # The output is claimed after the snapshot, so after the slot: under a regular file
    # it cannot be made.
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OutputError):
        run_dump(db.dsn, output=tmp_path / "a-file" / "backups", slot=slot)
    nothing_made(db, tmp_path / "none", slot)


def test_a_dump_cancelled_while_the_slot_waits_leaves_no_slot(db: Database, tmp_path: Path) -> None:
    """A logical slot's creation waits for every writing transaction to end; the dump's
    deadline passing meanwhile cancels the command on the server, and nothing is left."""
    db.execute(TABLES)
    slot = slot_name()

    async def main() -> None:
        writer = await asyncpg.connect(db.dsn)
        try:
            await writer.execute("BEGIN; INSERT INTO public.events VALUES (-1, 'open')")
            with pytest.raises(TimeLimitExceeded):
                await dump(db.dsn, output=tmp_path, slot=slot, max_duration=2)
            walsenders = await writer.fetch(
                "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'walsender'"
                " AND datname = current_database()"
            )
            assert not walsenders  # the replication connection is gone, its command cancelled
        finally:
            await writer.close()

    anyio.run(main, backend="asyncio")
    nothing_made(db, tmp_path, slot)


def test_a_given_publication_is_checked_and_never_changed(db: Database, tmp_path: Path) -> None:
    db.execute(TABLES)
    slot = slot_name()
    db.execute("CREATE PUBLICATION mine FOR TABLE public.events")
    with pytest.raises(NotReplicable, match="not in publication mine"):
        run_dump(db.dsn, output=tmp_path, slot=slot, publication="mine", with_schema=False)
    assert not db.fetch("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", slot)

    db.execute("CREATE PUBLICATION partial FOR ALL TABLES WITH (publish = 'insert, update')")
    with pytest.raises(NotReplicable, match="does not publish every insert"):
        run_dump(db.dsn, output=tmp_path, slot=slot, publication="partial")
    with pytest.raises(NotReplicable, match="publication absent does not exist"):
        run_dump(db.dsn, output=tmp_path, slot=slot, publication="absent")
    # Partitions' changes as their root's: an increment would not find their tables.
    db.execute("CREATE PUBLICATION rooted FOR ALL TABLES WITH (publish_via_partition_root)")
    with pytest.raises(NotReplicable, match="publish_via_partition_root"):
        run_dump(db.dsn, output=tmp_path, slot=slot, publication="rooted")

    db.execute("ALTER PUBLICATION mine ADD TABLE public.wide, public.parts")
    result = run_dump(
        db.dsn, output=tmp_path, name="b", slot=slot, publication="mine", with_schema=False
    )
    assert result.slot is not None and result.slot.publication == "mine"
    # drop-slot leaves a publication it did not create
    run = run_cli("drop-slot", slot, db.dsn)
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(
        rf"dropped replication slot {slot} \(it kept [0-9.]+ [KMG]?i?B of WAL on the server\)\n",
        run.stdout,
    ), run.stdout
    assert db.fetch("SELECT 1 FROM pg_publication WHERE pubname = 'mine'")


def test_drop_slot_removes_the_slot_and_its_own_publication(db: Database, tmp_path: Path) -> None:
    db.execute(TABLES)
    slot = slot_name()
    run_dump(db.dsn, output=tmp_path, name="b", slot=slot, with_schema=False)
    run = run_cli("drop-slot", slot, db.dsn)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"dropped replication slot {slot} (it kept ")
    assert lines[1:] == [f"dropped publication {slot}"]
    nothing_made(db, tmp_path / "none", slot)
    again = run_cli("drop-slot", slot, db.dsn)
    assert again.returncode == 0 and again.stdout.splitlines() == [
        f"no replication slot {slot} (nothing to drop)"
    ]
    # the backup itself is untouched; inspect shows where its slot started
    info = open_backup(tmp_path / "b").manifest.slot
    assert info is not None
    shown = run_cli("inspect", str(tmp_path / "b"), "--json")
    assert json.loads(shown.stdout)["slot"] == info.to_json()
    table = run_cli("inspect", str(tmp_path / "b"), env={**clean_env(), "COLUMNS": "200"})
    assert re.search(
        rf"slot +{slot} at {info.consistent_lsn} \(publication {slot};", table.stdout
    ), table.stdout


@pytest.mark.parametrize(
    "args, says",
    [
        (["--slot", "Nightly"], "--slot 'Nightly' is not a replication slot name"),
        (["--slot", "a" * 64], f"--slot '{'a' * 64}' is not a replication slot name"),
        (["--publication", "p"], "--publication is for a backup with a replication slot"),
    ],
)
def test_bad_slot_options_are_usage_errors(tmp_path: Path, args: list[str], says: str) -> None:
    run = run_cli("dump", "postgresql://nowhere.invalid/x", "-o", str(tmp_path), *args)
    assert run.returncode == ExitCode.USAGE
    assert run.stderr.splitlines()[-2].startswith("error: " + says)
    assert not any(tmp_path.iterdir())


def test_usage_error_is_raised_by_the_library_too(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a replication slot name"):
        run_dump("postgresql://nowhere.invalid/x", output=tmp_path, slot="bad-name")


GOOD_SLOT = {
    "name": "nightly",
    "plugin": "pgoutput",
    "publication": "nightly",
    "consistent_lsn": "0/16B3748",
    "system_identifier": "7312345678901234567",
}


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("name", "Nightly", "slot.name is not a replication slot name"),
        ("name", "../x", "slot.name is not a replication slot name"),
        ("plugin", "test_decoding", "slot.plugin"),
        ("publication", "", "slot.publication is not a publication name"),
        ("publication", "p" * 64, "slot.publication is not a publication name"),
        ("consistent_lsn", "0/16b3748; DROP", "slot.consistent_lsn is not a WAL position"),
        ("consistent_lsn", "123456789/0", "slot.consistent_lsn is not a WAL position"),
        ("system_identifier", "-1", "slot.system_identifier is not a system identifier"),
        ("system_identifier", 7, "slot.system_identifier"),
    ],
)
def test_a_forged_slot_entry_is_refused(
    db: Database, tmp_path: Path, key: str, value: object, says: str
) -> None:
    db.execute(TABLES)
    backup = Path(run_dump(db.dsn, output=tmp_path, name="b", with_schema=False).path)
    assert open_backup(backup).manifest.slot is None  # no --slot: no key
    reseal(backup, lambda body: body.update(slot=dict(GOOD_SLOT)))
    assert open_backup(backup).manifest.slot == SlotInfo(
        name="nightly",
        publication="nightly",
        consistent_lsn="0/16B3748",
        system_identifier="7312345678901234567",
    )
    reseal(backup, lambda body: body.update(slot={**GOOD_SLOT, key: value}))
    with pytest.raises(VerificationFailed, match=re.escape(says)):
        open_backup(backup)


def test_a_slot_that_can_no_longer_be_followed_says_why(db: Database, tmp_path: Path) -> None:
    db.execute(TABLES)
    slot = slot_name()
    result = run_dump(db.dsn, output=tmp_path, name="b", slot=slot, with_schema=False)
    info = result.slot
    assert info is not None
    start = parse_lsn(info.consistent_lsn)

    async def check() -> SlotState | None:
        conn = await asyncpg.connect(db.dsn)
        try:
            state = await slot_state(conn, slot)
            if state is not None:
                check_followable(state, info, start, db.name)
            return state
        finally:
            await conn.close()

    state = anyio.run(check, backend="asyncio")
    assert state is not None and state.plugin == "pgoutput" and not state.active
    assert state.confirmed_flush == start and state.held_bytes is not None
    with pytest.raises(NotReplicable, match="is not the backup's"):
        check_followable(state, info, start, "another_database")

    # moved on by someone else: the changes since the backup are gone
    db.execute("SET synchronous_commit = on; INSERT INTO public.events VALUES (-5, 'later')")
    db.execute("SELECT pg_replication_slot_advance($1, pg_current_wal_flush_lsn())", slot)
    with pytest.raises(NotReplicable, match="was moved past the backup's end") as moved:
        anyio.run(check, backend="asyncio")
    assert "a new full backup" in (moved.value.hint or "")

    db.execute("SELECT pg_drop_replication_slot($1)", slot)
    assert anyio.run(check, backend="asyncio") is None
    with pytest.raises(NotReplicable, match=f"replication slot {slot} no longer exists"):
        check_followable(None, info, start, db.name)


def test_an_invalidated_slot_is_said_to_be(tmp_path: Path) -> None:
    """max_slot_wal_keep_size let the server remove WAL the slot had not read."""
    settings = {"wal_level": "logical", "max_slot_wal_keep_size": "1MB"}
    with throwaway_server(settings=settings) as server:
        anyio.run(execute, server.dsn(), TABLES, backend="asyncio")
        result = run_dump(server.dsn(), output=tmp_path, slot="kept", with_schema=False)
        assert result.slot is not None

        async def churn() -> SlotState | None:
            conn = await asyncpg.connect(server.dsn())
            try:
                for _ in range(3):
                    await conn.execute(
                        "INSERT INTO public.wide SELECT g, repeat('y', 3000)"
                        " FROM generate_series(1, 2000) g; SELECT pg_switch_wal()"
                    )
                await conn.execute("CHECKPOINT")
                return await slot_state(conn, "kept")
            finally:
                await conn.close()

        state = anyio.run(churn, backend="asyncio")
    assert state is not None and state.wal_status == "lost"
    with pytest.raises(NotReplicable, match="slot kept was invalidated"):
        check_followable(state, result.slot, parse_lsn(result.slot.consistent_lsn), "postgres")
