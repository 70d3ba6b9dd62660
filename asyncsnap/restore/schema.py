"""The schema half of a whole restore: --clean, pre-data and post-data, and ANALYZE
(the kind of restore is chosen by ``plan`` and ``target.choose_kind``).

A whole restore runs pre-data (types, functions, tables, sequences: pg_restore's SQL,
executed here in one transaction, after ``--clean``'s drops in that same transaction),
then the rows (no constraint exists yet, so every table loads at once), then post-data
(indexes, constraints, triggers, rules, policies: ``pg_restore -j``), then sequences,
large objects, materialized views and ANALYZE.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import anyio
import anyio.to_thread
import asyncpg

from .. import schema
from ..batches import batched
from ..catalog import references_to, sql_name
from ..connection import ConnectParams, join_uri
from ..errors import RestoreFailed, VerificationFailed, some_names
from ..format import Backup
from ..scratch import PrivateScratch
from ..storage.backup import check_schema_file, plaintext


@dataclass(frozen=True)
class SchemaSteps:
    """What the schema half of a whole restore does."""

    archive: Path
    tool: schema.ClientTool  # the pg_restore that renders (and perhaps runs) the archive
    parallel_post_data: bool  # pg_restore -j; else the post-data SQL in one transaction
    clean: bool
    create: str | None  # the database --create makes
    no_owner: bool
    no_privileges: bool
    replaced: tuple[str, ...]  # backup tables in the target that --clean drops

    def describe(self, jobs: int) -> list[str]:
        lines = []  # (--create said what it makes before it made it)
        if self.replaced:
            lines.append(f"drop and re-create (--clean): {some_names(list(self.replaced))}")
        options = [
            o
            for o, on in (("--no-owner", self.no_owner), ("--no-privileges", self.no_privileges))
            if on
        ]
        extra = f" ({', '.join(options)})" if options else ""
        lines.append(
            f"pre-data: types, functions, tables, sequences in one transaction (beyond "
            f"{OBJECTS_PER_TRANSACTION} objects, one per {OBJECTS_PER_TRANSACTION}){extra} "
            f"(pg_restore {self.tool.version})"
        )
        return lines

    def describe_post(self, jobs: int) -> str:
        how = (
            f"pg_restore -j {jobs}"
            if self.parallel_post_data
            else f"one transaction (pg_restore {self.tool.version} is newer than the server)"
        )
        return f"then post-data: indexes, constraints, triggers, rules, policies ({how})"


def local_archive(backup: Backup) -> Path:
    assert backup.schema is not None
    local = backup.source.local_file(backup.schema.archive.path)
    assert local is not None, "a backup in a store is restored from a staged archive"
    return Path(local)


def _needs_staging(backup: Backup) -> bool:
    """Whether pg_restore (which must seek in the archive) needs a local plain copy of it:
    the backup is encrypted, or not on this machine."""
    if backup.schema is None:
        return False
    return bool(backup.encryption) or backup.source.local_file(backup.schema.archive.path) is None


def staged_archive(backup: Backup, scratch: PrivateScratch) -> Path | None:
    """The schema archive copied (and decrypted) into ``scratch`` (a 0700 temporary
    directory) for pg_restore; None when pg_restore can read it where it is."""
    if backup.schema is None or not _needs_staging(backup):
        return None
    target = scratch.path() / "schema.pgdump"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    where = backup.schema.archive.path
    with os.fdopen(fd, "wb") as out:
        for chunk in plaintext(backup, where):
            out.write(chunk)
    return target


async def plan_steps(
    backup: Backup,
    *,
    server_major: int,
    clean: bool,
    create: str | None,
    no_owner: bool,
    no_privileges: bool,
    replaced: Sequence[str],
    archive: Path | None = None,
) -> SchemaSteps:
    """Pick the pg_restore and check the archive before anything runs. ``archive``: the
    archive copied (and decrypted) to a private temporary file, for a backup that is
    encrypted or in an object store.

    :raises ClientToolMissing: when no pg_restore reads the archive.
    :raises VerificationFailed: when the archive does not match the manifest.
    """
    assert backup.schema is not None
    for entry in backup.schema.files:
        wrong = await anyio.to_thread.run_sync(check_schema_file, backup, entry)
        if wrong is not None:
            raise VerificationFailed(
                f"{entry.path} {wrong}", hint="the backup is damaged; nothing was restored"
            )
    tool, suited = await anyio.to_thread.run_sync(
        schema.pick_pg_restore, backup.schema.pg_dump_major, server_major
    )
    return SchemaSteps(
        archive=archive or local_archive(backup),
        tool=tool,
        parallel_post_data=suited,
        clean=clean,
        create=create,
        no_owner=no_owner,
        no_privileges=no_privileges,
        replaced=tuple(replaced),
    )


async def _script(conn: asyncpg.Connection, steps: SchemaSteps, section: str) -> str:
    """pg_restore's SQL for ``section`` ("pre-data", "post-data"), or "drops": the
    DROP statements of --clean for both sections (post-data's first: a rule or a trigger
    of one table may depend on another table or a function)."""
    clean = section == "drops"
    sql = await anyio.to_thread.run_sync(
        lambda: schema.render_sql(
            steps.tool,
            steps.archive,
            section=None if clean else section,
            clean=clean,
            no_owner=steps.no_owner,
            no_privileges=steps.no_privileges,
        )
    )
    script = schema.script_statements(sql, await schema.server_settings(conn))
    if not clean:
        return script
    return schema.drop_statements(script, omit=await _inherited_drops(conn))


# pg_restore --clean --if-exists's drop of a constraint, made by the target's server for
# each constraint a partition inherits (``format``'s %I is quote_ident, as pg_dump's
# fmtId quotes a name).
_INHERITED_DROPS = """
SELECT pg_catalog.format('ALTER TABLE IF EXISTS ONLY %I.%I DROP CONSTRAINT IF EXISTS %I;',
                         n.nspname, c.relname, con.conname)
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE NOT con.conislocal
"""


async def _inherited_drops(conn: asyncpg.Connection) -> set[str]:
    """The drops --clean leaves out: those of constraints the target's partitions inherit.

    pg_dump makes a partition's primary key or unique constraint on its own and attaches
    it to its parent's, and pg_restore --clean drops it on its own, before the parent's:
    the server refuses ("cannot drop inherited constraint"), and --clean failed for any
    backup with a partitioned table's key (pg_restore goes on past the error). The
    parent's drop, or the partition's own, takes it with it. A line not spelled as
    rendered here (a name pg_dump and this server quote differently) is kept: it fails
    as before, loudly."""
    return {row[0] for row in await conn.fetch(_INHERITED_DROPS)}


# A schema of at most this many objects (--clean's drops counted) is made in one
# transaction, so that a failure leaves nothing of it. A larger one commits after every
# this many, as ``pg_restore --transaction-size`` does: creating a table takes a few locks
# (the table, its TOAST table and index, its sequences) held until the transaction ends,
# and the server's lock table holds max_locks_per_transaction x max_connections (64 x 100
# by default) for all sessions, which ten thousand tables in one transaction overflow.
OBJECTS_PER_TRANSACTION = 500


async def pre_data(
    conn: asyncpg.Connection, steps: SchemaSteps, backup: Backup, *, rehearse: bool = False
) -> None:
    """Create (with --clean, first drop) the backup's pre-data objects: in one transaction
    or, beyond ``OBJECTS_PER_TRANSACTION`` objects, in transactions of that many.

    ``rehearse`` runs pre-data and post-data and rolls both back: what ``--dry-run`` does
    to find, without changing anything, every error the schema would hit (a missing
    role, an object in the way, a foreign key from a table outside the backup); always in
    one transaction, so a schema too large for the server's lock table cannot be
    rehearsed (said in the error).
    """
    script = await _script(conn, steps, "pre-data")
    drops = await _script(conn, steps, "drops") if steps.clean else ""
    if steps.clean:
        await _refuse_outside_references(conn, backup)
    batches = None if rehearse else await _batches(steps, "pre-data", script, drops)
    if batches is not None:
        await _run_batches(conn, batches, steps)
        return
    tx = conn.transaction()
    await tx.start()
    try:
        if steps.clean:
            await _run(conn, drops, "--clean", steps)
        await _run(conn, script, "pre-data", steps)
        if rehearse:
            await _run(conn, await _script(conn, steps, "post-data"), "post-data", steps)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            if not conn.is_closed():
                await tx.rollback()
                await conn.execute("RESET ALL")
        if rehearse and _lock_table_full(exc):
            raise RestoreFailed(
                f"--dry-run cannot rehearse this schema: {exc.__cause__}",
                hint="it rehearses the whole schema in one transaction, which the server's "
                "lock table cannot hold; raise max_locks_per_transaction for the rehearsal, "
                f"or run without --dry-run (which commits every {OBJECTS_PER_TRANSACTION} "
                "objects)",
            ) from exc
        raise
    if rehearse:
        await tx.rollback()
    else:
        await tx.commit()
    await conn.execute("RESET ALL")  # the script's SETs outlive its transaction


def _lock_table_full(exc: BaseException) -> bool:
    return isinstance(exc.__cause__, asyncpg.OutOfMemoryError)


@dataclass(frozen=True)
class _Batches:
    """A large schema's work in transactions: the prologue's SETs (run once, they hold
    for the session), then each batch of (section, SQL) pieces in its own transaction."""

    prologue: str
    batches: list[list[tuple[str, str]]]


async def _batches(steps: SchemaSteps, section: str, script: str, drops: str) -> _Batches | None:
    """``script`` (with --clean, ``drops`` first) cut into transactions of
    ``OBJECTS_PER_TRANSACTION`` objects; None when it fits in one, or when its pieces do
    not match the archive's table of contents (a header spelled inside an entry, see
    ``schema.script_entries``): then it runs in one transaction, as it always did."""
    prologue, entries = schema.script_entries(script)
    pieces = [("--clean", d) for d in (schema.split_statements(drops) if drops else [])]
    pieces += [(section, entry) for entry in entries]
    if len(pieces) <= OBJECTS_PER_TRANSACTION:
        return None
    expected = await anyio.to_thread.run_sync(
        lambda: schema.count_entries(
            steps.tool,
            steps.archive,
            section=section,
            no_owner=steps.no_owner,
            no_privileges=steps.no_privileges,
        )
    )
    if expected != len(entries):
        return None
    return _Batches(prologue, [list(b) for b in batched(pieces, OBJECTS_PER_TRANSACTION)])


async def _run_batches(conn: asyncpg.Connection, work: _Batches, steps: SchemaSteps) -> None:
    """Each batch in its own transaction; a failure says what was kept."""
    try:
        await schema.run_script(conn, work.prologue)
        for batch in work.batches:
            async with conn.transaction():
                for section in dict.fromkeys(s for s, _ in batch):  # --clean's, then section's
                    sql = "\n".join(text for s, text in batch if s == section)
                    await _run(conn, sql, section, steps, batched=True)
    finally:
        with anyio.CancelScope(shield=True):
            if not conn.is_closed():
                await conn.execute("RESET ALL")  # the script's SETs outlive its transactions


async def post_data(
    conn: asyncpg.Connection, params: ConnectParams, steps: SchemaSteps, *, jobs: int
) -> None:
    """Indexes, constraints, triggers, rules and policies, after the rows are in."""
    if steps.parallel_post_data:
        await schema.run_post_data(
            steps.tool,
            params,
            steps.archive,
            jobs=jobs,
            no_owner=steps.no_owner,
            no_privileges=steps.no_privileges,
        )
        return
    script = await _script(conn, steps, "post-data")
    batches = await _batches(steps, "post-data", script, "")
    if batches is not None:
        await _run_batches(conn, batches, steps)
        return
    async with conn.transaction():
        await _run(conn, script, "post-data", steps)
    await conn.execute("RESET ALL")


async def _run(
    conn: asyncpg.Connection,
    script: str,
    section: str,
    steps: SchemaSteps,
    *,
    batched: bool = False,
) -> None:
    try:
        await schema.run_script(conn, script)
    except asyncpg.PostgresError as exc:
        hint = getattr(exc, "hint", None)
        if "role" in str(exc) and "does not exist" in str(exc):
            hint = "the source's roles are missing here: pass --no-owner (and --no-privileges)"
        elif isinstance(exc, asyncpg.DuplicateObjectError | asyncpg.DuplicateTableError):
            hint = "pass --clean to drop the backup's objects first"
        raise RestoreFailed(
            f"creating the schema ({section}) failed: {exc}",
            hint=_kept(hint, batched=batched),
        ) from exc


def _kept(hint: str | None, *, batched: bool) -> str:
    """The failure's hint, and what of the schema was kept."""
    if not batched:
        return hint or "nothing of the schema was kept (one transaction)"
    kept = (
        f"the schema commits every {OBJECTS_PER_TRANSACTION} objects, so the ones before "
        "this were kept: the same command with --clean starts over"
    )
    return f"{hint}; {kept}" if hint else kept


async def _refuse_outside_references(conn: asyncpg.Connection, backup: Backup) -> None:
    """--clean drops the backup's tables, and a foreign key from a table outside the
    backup would stop that: refused up front, naming it (dropping it would change a table
    we do not restore). Keys between the backup's tables are dropped first, so that
    keys added since cannot stop the drops in the archive's order."""
    names = [sql_name(*t.key) for t in backup.tables]
    references = await references_to(conn, names)
    outside = [f"{r.referencing} ({r.name})" for r in references if not r.inside]
    if outside:
        raise RestoreFailed(
            f"--clean cannot drop the backup's tables: {some_names(outside)} outside the "
            "backup references them",
            hint="drop those foreign keys (or tables) first; asyncsnap does not change "
            "tables it does not restore",
        )


async def analyze(conn: asyncpg.Connection, backup: Backup) -> None:
    """Statistics for the restored tables, so the first queries plan well."""
    names = ", ".join(sql_name(*t.key) for t in backup.tables)
    if names:
        await conn.execute(f"ANALYZE {names}")


def database_name(backup: Backup) -> str:
    """The source database's name, which --create gives the new one (as pg_restore -C).

    :raises VerificationFailed: when the manifest's name is not a database name.
    """
    server = backup.manifest.server
    name = server.database if server else None
    if not isinstance(name, str) or not 0 < len(name.encode()) < 64 or "\x00" in name:
        raise VerificationFailed("the manifest's server.database is not a database name")
    return name


def with_database(params: ConnectParams, name: str) -> ConnectParams:
    """The same connection parameters for database ``name``."""
    if params.uri is None:
        return replace(params, uri="postgresql:///" + quote(name, safe=""))
    parts = urlsplit(params.uri)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "dbname"]
    uri = join_uri(parts.scheme, parts.netloc, "/" + quote(name, safe=""), query)
    return replace(params, uri=uri)
