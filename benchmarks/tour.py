"""A first run of asyncsnap, on a throwaway database: ``python -m benchmarks.tour``.

Starts a PostgreSQL server of its own (removed at the end), fills a small shop database
(customers with jsonb preferences, a million orders), then runs what a user would: a
dump with its progress, the files opened with ``zstd -dc | jq``, ``sha256sum -c``,
``asyncsnap verify``, a restore into a new database, a check that the copy holds exactly
the same rows, and the few numbers that matter beside pg_dump's on the same data. Each
command is printed before it runs, as you would type it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from throwaway.postgres import PASSWORD, find_bindir, throwaway_server  # noqa: E402

SHOP_SQL = """
CREATE TABLE customers (
    id int PRIMARY KEY, name text NOT NULL, prefs jsonb, joined timestamptz NOT NULL);
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers (id),
    total numeric(12,2) NOT NULL, placed timestamptz NOT NULL, status text NOT NULL);
INSERT INTO customers
SELECT g, 'customer ' || g,
       jsonb_build_object('lang', (ARRAY['en', 'fr', 'de'])[1 + g % 3], 'newsletter', g % 2 = 0),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '17 minutes'
FROM generate_series(1, $CUSTOMERS) g;
INSERT INTO orders (customer_id, total, placed, status)
SELECT 1 + g % $CUSTOMERS, round((g % 9973) * 1.37, 2),
       timestamptz '2025-01-01 00:00:00+00' + g * interval '3 seconds',
       (ARRAY['paid', 'shipped', 'returned'])[1 + g % 3]
FROM generate_series(1, $ORDERS) g;
ANALYZE;
"""

# One fingerprint per table: its row count and the md5 of its rows in key order.
FINGERPRINT = (
    "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t.id), '')) "
    "FROM public.{table} AS t"
)


def say(text: str) -> None:
    print(f"\n{text}", flush=True)


def shell(command: str, env: dict[str, str], *, capture: bool = False) -> tuple[str, float]:
    """Print ``command`` as typed, run it with bash, show its output; its stdout (when
    ``capture``) and its wall time. A failure ends the tour with the command's status."""
    print(f"$ {command}", flush=True)
    started = time.monotonic()
    run = subprocess.run(
        ["bash", "-c", command],
        env=env,
        stdout=subprocess.PIPE if capture else None,
        text=True,
    )
    seconds = time.monotonic() - started
    if capture and run.stdout:
        print(run.stdout, end="", flush=True)
    if run.returncode != 0:
        sys.exit(f"tour: the command above failed with exit {run.returncode}")
    return run.stdout or "", seconds


async def _sql(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _fingerprints(dsn: str) -> dict[str, tuple[int, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            table: tuple(await conn.fetchrow(FINGERPRINT.format(table=table)))
            for table in ("customers", "orders")
        }
    finally:
        await conn.close()


async def _size(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tour", description=__doc__)
    parser.add_argument("--orders", type=int, default=1_000_000, help="rows in orders")
    args = parser.parse_args()
    customers = max(1, args.orders // 10)
    bindir = find_bindir()
    work = Path(tempfile.mkdtemp(prefix="asyncsnap-tour-"))
    say("Starting a throwaway PostgreSQL server (removed at the end) ...")
    with throwaway_server(bindir) as server:
        env = dict(os.environ)
        for key in [k for k in env if k.startswith("PG") or k == "DATABASE_URL"]:
            del env[key]
        # The standard libpq variables: asyncsnap, pg_dump and createdb all read them.
        env.update(
            PGHOST="127.0.0.1",
            PGPORT=str(server.port),
            PGUSER="postgres",
            PGPASSWORD=PASSWORD,
            PATH=os.pathsep.join([str(Path(sys.executable).parent), str(bindir), env["PATH"]]),
        )
        say(
            f"export PGHOST=127.0.0.1 PGPORT={server.port} PGUSER=postgres "
            "PGPASSWORD=...   # set for every command below"
        )
        anyio.run(_sql, server.dsn(), "CREATE DATABASE shop")
        fill = SHOP_SQL.replace("$CUSTOMERS", str(customers)).replace("$ORDERS", str(args.orders))
        say(f"Filling database shop: {customers:,} customers, {args.orders:,} orders ...")
        anyio.run(_sql, server.dsn("shop"), fill)
        source_size = anyio.run(_size, server.dsn("shop"))

        backups = work / "backups"
        say("1. The dump: every table at one moment, read over two connections.")
        out, dump_seconds = shell(f"asyncsnap dump shop -o {backups}", env, capture=True)
        backup = Path(out.strip())
        say("2. What it wrote: a manifest, checksums, the schema, one file per table.")
        shell(f"ls {backup} {backup}/data", env)
        say("Each file is one JSON object per row (zstd). jsonb values are JSON strings,")
        print("exact as PostgreSQL printed them: jq's fromjson opens them.")
        files = f"{backup}/data/public.customers-*.ndjson.zst"
        if shutil.which("zstd") and shutil.which("jq"):
            shell(f"zstd -dc {files} | head -2 | jq -c .", env)
            shell(f"zstd -dc {files} | jq -r '.prefs | fromjson | .lang' | sort | uniq -c", env)
        else:
            print("(zstd or jq is not installed: skipped; on Debian `apt install zstd jq`)")
        if shutil.which("sha256sum"):
            shell(f"cd {backup} && sha256sum -c --quiet SHA256SUMS && echo checksums OK", env)
        say("3. verify: every file, row count and line checked against the manifest.")
        shell(f"asyncsnap verify {backup}", env)

        say("4. Restore into a new, empty database: schema, rows, sequences, indexes.")
        shell("createdb shop_copy", env)
        _, restore_seconds = shell(f"asyncsnap restore {backup} shop_copy", env)
        original = anyio.run(_fingerprints, server.dsn("shop"))
        copy = anyio.run(_fingerprints, server.dsn("shop_copy"))
        for table, (rows, digest) in original.items():
            same = "identical" if copy[table] == (rows, digest) else "DIFFERENT"
            print(f"   {table}: {rows:,} rows, md5 of all rows {digest[:12]}..., copy {same}")
        if copy != original:
            sys.exit("tour: the restored database differs from the source")

        say("For comparison, PostgreSQL's own tools on the same data and machine:")
        pg_out = work / "pg_dump"
        _, pg_dump_seconds = shell(f"pg_dump -Fd -j 2 -d shop -f {pg_out}", env)
        shell("createdb shop_pg", env)
        _, pg_restore_seconds = shell(f"pg_restore -j 2 -d shop_pg {pg_out}", env)

        rows = sum(rows for rows, _ in original.values())
        say("The numbers (one run each, wall time, this machine):")
        lines = [
            ("rows in the database", f"{rows:,}", ""),
            ("database size on disk", mib(source_size), "tables and indexes"),
            ("asyncsnap backup", mib(size_of(backup)), "NDJSON, zstd"),
            ("pg_dump -Fd backup", mib(size_of(pg_out)), "PostgreSQL's directory format, gzip"),
            ("asyncsnap dump", f"{dump_seconds:.1f} s", "incl. the schema via pg_dump"),
            ("pg_dump -Fd -j 2", f"{pg_dump_seconds:.1f} s", ""),
            ("asyncsnap restore", f"{restore_seconds:.1f} s", "schema, rows, indexes, ANALYZE"),
            ("pg_restore -j 2", f"{pg_restore_seconds:.1f} s", ""),
        ]
        for label, value, note in lines:
            print(f"   {label:<24}{value:>12}   {note}")
        print(
            "\nTiny data and one run: these say that it works, not how fast it is on yours."
            "\nThe full comparison (pgbench scale 50, DuckDB, raw COPY, memory): "
            "python -m benchmarks"
        )
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nDone; the server and {shlex.quote(str(work))} are removed.")


if __name__ == "__main__":
    main()
