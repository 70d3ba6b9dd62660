"""A faithful copy of the script asyncsnap replaces, for the benchmark only.

It read DATABASE_URL, fetched every table whole into memory (``fetchall()``), wrote one
timestamped JSON file and printed row counts. asyncpg's ``fetch`` stands in for psycopg's
``fetchall``: both materialise every row as Python objects before anything is written.
Usage: python -m benchmarks.old_script DSN OUTDIR TABLE...
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import asyncpg


async def main(dsn: str, outdir: Path, tables: list[str]) -> None:
    conn = await asyncpg.connect(dsn)
    data = {}
    try:
        for table in tables:
            rows = await conn.fetch(f"SELECT * FROM {table}")
            data[table] = [dict(r) for r in rows]
    finally:
        await conn.close()
    path = outdir / f"export_{time.strftime('%Y%m%d_%H%M%S')}.json"
    with path.open("w") as f:
        json.dump(data, f, default=str)
    for table, rows in data.items():
        print(f"{table}: {len(rows)} rows")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:]))
