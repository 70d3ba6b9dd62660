"""Holding the target of a restore, so that two restores cannot interleave.

Two restores into one database at once used to both succeed with every row loaded twice,
or fail half-way in post-data: each checked that the tables were empty (or dropped them,
with --clean) before the other had loaded anything. A restore now holds the target:

- **one restore per database.** The connection that coordinates a restore takes a
  session-level advisory lock of the target database before it looks at anything, and
  keeps it until the restore (post-data, sequences, ``--compare`` included) is over, or
  its session ends. A second restore into the same database fails at once with
  ``TargetLocked`` (exit 6), naming the session that holds it: waiting would only load
  the same rows again after the first one, into tables that are then not empty. With
  ``--create`` the database does not exist yet: the name to create is held first, on
  the connection to the maintenance database, until the new database is held.
- **writers kept out while a table is checked and loaded.** Into existing tables (and
  into the tables a whole restore has just created) a load's transaction locks its table
  ``IN EXCLUSIVE MODE`` (reads go on, writes wait) before it checks that the table is
  empty, so no other session can insert between the check and the rows
  (``restore._hold_empty``). A table split at dump time loads over several connections;
  its first file is loaded in the transaction that checked, and the other files once
  that one has committed (their COPY waits for the lock): after that, the table holds
  the backup's rows, and a writer that comes then writes into a restored table.

Advisory locks belong to one database (PostgreSQL's lock tag includes it), so the key
needs no database name; they are only seen by sessions that ask for the same key, and
asyncsnap is the only one that does (``LOCK_CLASS`` spells "asnp").
"""

from __future__ import annotations

import hashlib

import asyncpg

from .errors import TargetLocked

# pg_try_advisory_lock(key1, key2): key1 says what is held, key2 which one.
LOCK_CLASS = 0x61736E70  # "asnp": a restore is running into this database (key2 0)
CREATE_CLASS = LOCK_CLASS + 1  # a restore is creating the database named by key2's hash

_HOLDER_SQL = """
SELECT l.pid, a.application_name, a.usename::pg_catalog.text AS usename,
       pg_catalog.to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
           AS since
FROM pg_catalog.pg_locks l
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid
WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.granted
  AND l.database OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d
                       WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
  AND l.classid OPERATOR(pg_catalog.=) $1::pg_catalog.int8::pg_catalog.oid
  AND l.objid OPERATOR(pg_catalog.=) $2::pg_catalog.int8::pg_catalog.oid
  AND l.objsubid OPERATOR(pg_catalog.=) 2
LIMIT 1
"""


def name_key(name: str) -> int:
    """The advisory lock's second key for a database name: 31 bits of its SHA-256 (two
    names that share them only make one of two --create runs wait its turn)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") >> 1


async def hold_database(conn: asyncpg.Connection, database: str) -> None:
    """Hold the database ``conn`` is connected to (named ``database``, for the message)
    for the rest of ``conn``'s session.

    :raises TargetLocked: when another asyncsnap restore holds it.
    """
    await _hold(
        conn, LOCK_CLASS, 0, f"another asyncsnap restore is running into database {database}"
    )


async def hold_name(conn: asyncpg.Connection, name: str) -> None:
    """Hold the name of a database that --create will make (on a connection to another
    database of the server), for the rest of ``conn``'s session.

    :raises TargetLocked: when another asyncsnap restore --create holds the name.
    """
    await _hold(
        conn,
        CREATE_CLASS,
        name_key(name),
        f"another asyncsnap restore --create is making database {name}",
    )


async def _hold(conn: asyncpg.Connection, key1: int, key2: int, what: str) -> None:
    if await conn.fetchval("SELECT pg_catalog.pg_try_advisory_lock($1, $2)", key1, key2):
        return
    holder = await conn.fetchrow(_HOLDER_SQL, key1, key2)
    who = ""
    if holder is not None:
        parts = [f"pid {holder['pid']}"]
        if holder["usename"]:
            parts.append(f"user {holder['usename']}")
        if holder["since"]:
            parts.append(f"connected since {holder['since']} UTC")
        who = f" ({', '.join(parts)})"
    raise TargetLocked(
        f"{what}{who}",
        hint="wait for it to end and run this one again; two restores at once would load "
        "the rows twice",
    )
