"""Large objects: their OIDs, owners, privileges and bytes, dumped and restored in bounded
memory.

They are data (pg_dump includes them), kept outside any table: a table holds only an
object's OID. A dump writes every object into one data file, ``data/large-objects.<ext>``,
in OID order, one line per piece of at most ``PIECE_BYTES`` bytes::

    {"oid": 16403, "owner": "app", "acl": null, "offset": 0, "data": "\\x89504e47..."}

``data`` is the piece as ``bytea`` hex text, like a ``bytea`` column. An object's pieces
follow each other in offset order, the first at offset 0 (an empty object is one line
with ``"data": "\\x"``); ``owner`` and ``acl`` (the ``aclitem[]`` text, or null for the
default privileges) repeat on each line so that every line has the same keys.

Objects are read with ``lo_get`` inside the worker's transaction, so they are as of the
dump's snapshot. A restore creates each object with its OID (``lo_from_bytea``), appends
the later pieces (``lo_put``), then sets the owner and privileges where the roles exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import orjson

from .catalog import quote_ident
from .errors import PermissionDenied
from .inventory import LargeObjectCounts
from .storage.files import DataFileWriter

LARGE_OBJECTS_STEM = "large-objects"
# Bytes of an object per line (2 MiB of hex): bounds a line, and so a reader's memory.
PIECE_BYTES = 1 << 20
# Objects are listed this many at a time, and their first bytes fetched in one query.
_BATCH = 256
# An object no longer than this is fetched whole in that query; longer ones piece by
# piece. 256 objects x 64 KiB bound one batch's memory to 16 MiB.
_SMALL = 64 << 10

# Whether the session's role may read an object: what lo_get checks (the owner, a role
# with the owner's privileges, a SELECT grant to it or PUBLIC, a superuser, or the server's
# lo_compat_privileges). Every version from 14 has these functions; 17 also has
# has_largeobject_privilege(), which this mirrors.
READABLE_SQL = """(
    pg_catalog.current_setting('lo_compat_privileges')::pg_catalog.bool
    OR (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
    OR pg_catalog.pg_has_role(m.lomowner, 'USAGE')
    OR EXISTS (SELECT 1 FROM pg_catalog.aclexplode(m.lomacl) a
               WHERE a.privilege_type = 'SELECT'
                 AND (a.grantee = 0 OR pg_catalog.pg_has_role(a.grantee, 'USAGE'))))"""

COUNT_SQL = f"""
SELECT pg_catalog.count(*) AS total,
       pg_catalog.count(*) FILTER (WHERE NOT {READABLE_SQL}) AS unreadable
FROM pg_catalog.pg_largeobject_metadata m
"""

_LIST_SQL = """
SELECT m.oid, pg_catalog.pg_get_userbyid(m.lomowner) AS owner,
       m.lomacl::pg_catalog.text AS acl
FROM pg_catalog.pg_largeobject_metadata m
WHERE m.oid > $1 {readable}
ORDER BY m.oid
LIMIT {limit}
"""

_HEADS_SQL = f"""
SELECT pg_catalog.lo_get(o.oid, 0, {_SMALL + 1}) AS head
FROM pg_catalog.unnest($1::pg_catalog.oid[]) WITH ORDINALITY AS o(oid, n)
ORDER BY o.n
"""

_PIECE_SQL = (
    "SELECT pg_catalog.lo_get($1::pg_catalog.oid, $2::pg_catalog.int8, $3::pg_catalog.int4)"
)


async def count_large_objects(conn: asyncpg.Connection) -> LargeObjectCounts:
    """How many large objects exist in the snapshot, and how many this role cannot read."""
    row = await conn.fetchrow(COUNT_SQL)
    assert row is not None
    return LargeObjectCounts(total=row["total"], unreadable=row["unreadable"])


def _line(oid: int, owner: str, acl: str | None, offset: int, data: bytes) -> bytes:
    return (
        orjson.dumps(
            {"oid": oid, "owner": owner, "acl": acl, "offset": offset, "data": "\\x" + data.hex()}
        )
        + b"\n"
    )


async def dump_large_objects(
    conn: asyncpg.Connection,
    writer: DataFileWriter,
    *,
    readable_only: bool,
    on_progress: Callable[[], None],
) -> tuple[int, int]:
    """Write every large object (``readable_only``: those the role may read) to
    ``writer``; returns the number of objects and their bytes. Runs in the caller's
    snapshot transaction.

    :raises PermissionDenied: if an object cannot be read (without ``readable_only``, the
        inventory has already refused unreadable objects; this is the server's word).
    """
    list_sql = _LIST_SQL.format(
        readable=f"AND {READABLE_SQL}" if readable_only else "", limit=_BATCH
    )
    objects = total = 0
    last = 0
    while True:
        batch = await conn.fetch(list_sql, last)
        if not batch:
            return objects, total
        last = batch[-1]["oid"]
        try:
            heads = await conn.fetch(_HEADS_SQL, [r["oid"] for r in batch])
        except asyncpg.InsufficientPrivilegeError as exc:
            raise PermissionDenied(
                f"permission denied reading a large object: {exc.message}",
                hint="GRANT SELECT ON LARGE OBJECT to this role, --no-large-objects, or "
                "--skip-unreadable",
            ) from exc
        for record, head_row in zip(batch, heads, strict=True):
            oid, owner, acl = record["oid"], record["owner"], record["acl"]
            head: bytes = head_row["head"]
            if len(head) <= _SMALL:
                writer.write(_line(oid, owner, acl, 0, head))
                total += len(head)
            else:
                del head
                offset = 0
                while True:
                    piece: bytes = await conn.fetchval(_PIECE_SQL, oid, offset, PIECE_BYTES)
                    if not piece and offset:
                        break  # the size was a multiple of PIECE_BYTES
                    writer.write(_line(oid, owner, acl, offset, piece))
                    offset += len(piece)
                    total += len(piece)
                    if len(piece) < PIECE_BYTES:
                        break
            objects += 1
        on_progress()


@dataclass(frozen=True)
class LargeObjectLine:
    """One parsed line of a large-object file, checked."""

    oid: int
    owner: str
    acl: str | None
    offset: int
    data: bytes


def parse_line(line: bytes | bytearray) -> LargeObjectLine:
    """A line of a large-object file; ``ValueError`` when it is not one."""
    value = orjson.loads(line)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    oid, owner, acl = value.get("oid"), value.get("owner"), value.get("acl")
    offset, data = value.get("offset"), value.get("data")
    if not (
        isinstance(oid, int)
        and 0 < oid < 2**32
        and isinstance(owner, str)
        and (acl is None or isinstance(acl, str))
        and isinstance(offset, int)
        and 0 <= offset < 2**62
        and isinstance(data, str)
        and data.startswith("\\x")
    ):
        raise ValueError("not a large-object line")
    return LargeObjectLine(oid, owner, acl, offset, bytes.fromhex(data[2:]))


async def existing_large_objects(conn: asyncpg.Connection, oids: list[int]) -> list[int]:
    rows = await conn.fetch(
        "SELECT m.oid FROM pg_catalog.pg_largeobject_metadata m "
        "WHERE m.oid = ANY ($1::pg_catalog.oid[]) ORDER BY 1",
        oids,
    )
    return [r["oid"] for r in rows]


_CREATE_SQL = "SELECT pg_catalog.lo_from_bytea($1::pg_catalog.oid, $2::pg_catalog.bytea)"
_PUT_SQL = "SELECT pg_catalog.lo_put($1::pg_catalog.oid, $2::pg_catalog.int8, $3::pg_catalog.bytea)"
_UNLINK_SQL = "SELECT pg_catalog.lo_unlink($1::pg_catalog.oid)"
_PRIVILEGES = {"SELECT", "UPDATE"}


async def write_pieces(conn: asyncpg.Connection, lines: list[LargeObjectLine]) -> None:
    """Create or extend objects from consecutive lines, in order, one round trip per run
    of the same statement."""
    run: list[tuple[object, ...]] = []
    creating: bool | None = None
    for line in lines:
        first = line.offset == 0
        if creating is not None and first != creating:
            await conn.executemany(_CREATE_SQL if creating else _PUT_SQL, run)
            run = []
        creating = first
        run.append((line.oid, line.data) if first else (line.oid, line.offset, line.data))
    if run:
        await conn.executemany(_CREATE_SQL if creating else _PUT_SQL, run)


async def unlink(conn: asyncpg.Connection, oids: list[int]) -> None:
    await conn.executemany(_UNLINK_SQL, [(oid,) for oid in oids])


async def set_owner_and_privileges(
    conn: asyncpg.Connection, line: LargeObjectLine, roles: set[str]
) -> list[str]:
    """Give a restored object its owner and privileges where the roles exist here; returns
    what could not be applied, for a notice. Names are quoted; privileges come from the
    server's own ``aclexplode`` and are checked against the two a large object has."""
    problems = []
    if line.owner in roles:
        await conn.execute(f"ALTER LARGE OBJECT {int(line.oid)} OWNER TO {quote_ident(line.owner)}")
    else:
        problems.append(f"owner {line.owner} does not exist")
    if line.acl is None:
        return problems
    try:
        grants = await conn.fetch(
            "SELECT pg_catalog.pg_get_userbyid(a.grantee) AS grantee, a.grantee = 0 AS public, "
            "a.privilege_type, a.is_grantable "
            "FROM pg_catalog.aclexplode($1::pg_catalog.text::pg_catalog.aclitem[]) a",
            line.acl,
        )
    except asyncpg.PostgresError as exc:  # a role named in the ACL does not exist here
        return [*problems, f"privileges {line.acl} not applied: {exc}"]
    for g in grants:
        if g["privilege_type"] not in _PRIVILEGES or (
            not g["public"] and g["grantee"] == line.owner
        ):
            continue
        who = "PUBLIC" if g["public"] else quote_ident(g["grantee"])
        option = " WITH GRANT OPTION" if g["is_grantable"] and not g["public"] else ""
        await conn.execute(
            f"GRANT {g['privilege_type']} ON LARGE OBJECT {int(line.oid)} TO {who}{option}"
        )
    return problems
