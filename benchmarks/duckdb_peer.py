"""DuckDB with its postgres extension, as a peer of the benchmark (an optional extra:
``pip install -e '.[bench-duckdb]'``).

    python -m benchmarks.duckdb_peer export DSN OUTDIR TABLE...   # one .ndjson.zst each
    python -m benchmarks.duckdb_peer load DSN INDIR TABLE...      # INSERT ... read_json

DuckDB reads with binary COPY over several ctid ranges and renders JSON in vectorized
native code on all cores; it is the speed to beat, not an exact peer (its JSON of bytea,
numerics past 38 digits, infinities or array bounds is not PostgreSQL's). The extension
wheel ships ``postgres.duckdb_extension``; DuckDB loads it only under the name
``postgres_scanner.duckdb_extension``, so it is copied under that name first.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# The DuckDB the extension wheel was built for: extensions load only into their version.
DUCKDB_VERSION = "1.5.5"


def available() -> str | None:
    """Why the peer cannot run, or None when it can."""
    try:
        import duckdb
        import duckdb_extension_postgres  # noqa: F401
    except ImportError:
        return "not installed (pip install -e '.[bench-duckdb]')"
    if duckdb.__version__ != DUCKDB_VERSION:
        return (
            f"duckdb {duckdb.__version__} installed; its postgres extension needs {DUCKDB_VERSION}"
        )
    return None


def _extension() -> Path:
    import duckdb_extension_postgres

    found = sorted(Path(duckdb_extension_postgres.__file__).parent.rglob("*.duckdb_extension"))
    if not found:
        raise SystemExit("duckdb-extension-postgres holds no .duckdb_extension file")
    return found[0]


def connect(dsn: str, scratch: Path) -> Any:
    import duckdb

    conn = duckdb.connect()
    extension = scratch / "postgres_scanner.duckdb_extension"
    shutil.copyfile(_extension(), extension)
    conn.execute(f"LOAD '{extension}'")
    literal = "'" + dsn.replace("'", "''") + "'"  # ATTACH takes no parameters
    conn.execute(f"ATTACH {literal} AS pg (TYPE postgres)")
    return conn


def _name(table: str) -> str:
    schema, _, name = table.partition(".")
    return f'pg."{schema}"."{name}"'


def _empty(path: Path) -> bool:
    import zstandard

    with open(path, "rb") as fh:
        return not zstandard.ZstdDecompressor().stream_reader(fh).read(1)


def main(argv: list[str]) -> None:
    command, dsn, directory, *tables = argv
    folder = Path(directory)
    with tempfile.TemporaryDirectory(prefix="duckdb-peer-") as scratch:
        conn = connect(dsn, Path(scratch))
        for table in tables:
            path = folder / f"{table}.ndjson.zst"
            if command == "export":
                conn.execute(
                    f"COPY (SELECT * FROM {_name(table)}) TO '{path}' "
                    "(FORMAT json, COMPRESSION zstd)"
                )
            elif command == "load":
                if _empty(path):
                    continue  # read_json cannot infer the columns of no rows
                conn.execute(
                    f"INSERT INTO {_name(table)} SELECT * FROM read_json('{path}', "
                    "format = 'newline_delimited', compression = 'zstd')"
                )
            else:
                raise SystemExit(f"unknown command {command!r}: export or load")
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1:])
