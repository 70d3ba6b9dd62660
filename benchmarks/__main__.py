"""Benchmark: asyncsnap dump against pg_dump, the raw COPY limit and the old script.

    python -m benchmarks [--quick] [--scale N] [--runs N] [--dsn DSN] [--results FILE]

Starts a throwaway PostgreSQL from the installed binaries unless --dsn is given (that
database is filled with the benchmark tables), builds the datasets, then runs every tool
alternately, --runs times, each as a separate process timed from outside (wall time and
peak RSS of the process tree from wait4). Prints medians and ratios and writes a JSON file.
Timings are never asserted: this is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import asyncpg

ROOT = Path(__file__).resolve().parent.parent

MIXED_SQL = """
DROP TABLE IF EXISTS mixed;
CREATE TABLE mixed (
    id bigint PRIMARY KEY, name text, amount numeric(14,4), created timestamptz,
    active boolean, attrs jsonb, ref uuid, score float8, tags int[], blob bytea);
INSERT INTO mixed
SELECT g, 'name ' || md5(g::text), (g * 1.2345)::numeric(14,4),
       timestamptz '2020-01-01' + g * interval '1 minute', g % 3 = 0,
       jsonb_build_object('k', g, 'tag', md5(g::text), 'list', jsonb_build_array(g, g * 2)),
       md5(g::text)::uuid, g / 7.0, ARRAY[g, g + 1, g + 2], decode(md5(g::text), 'hex')
FROM generate_series(1, $ROWS) g;
"""

PGBENCH_TABLES = ["pgbench_accounts", "pgbench_branches", "pgbench_history", "pgbench_tellers"]


@dataclass
class Dataset:
    name: str
    tables: list[str]
    rows: int = 0
    table_bytes: int = 0


@dataclass
class Tool:
    name: str
    label: str
    runs: list[tuple[float, int, int]] = field(default_factory=list)  # wall s, rss KiB, bytes


def bindir() -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.pgserver import find_bindir

    return find_bindir()


@contextmanager
def server(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    sys.path.insert(0, str(ROOT))
    from tests.pgserver import throwaway_server

    with throwaway_server() as s:
        anyio.run(_execute, s.dsn(), "CREATE DATABASE bench", backend="asyncio")
        yield s.dsn("bench")


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetchval(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


def libpq_env(dsn: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    return env


GNU_TIME = shutil.which("time", path="/usr/bin:/bin")


def measure(cmd: list[str], *, env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of the command's largest process.

    Peak RSS comes from GNU time when installed: a child forked from this (larger) Python
    process inherits its RSS high-water mark, so wait4's ru_maxrss overstates small
    tools. Without GNU time it falls back to that upper bound.
    """
    with tempfile.NamedTemporaryFile() as rss_file, tempfile.TemporaryFile() as err:
        full = [GNU_TIME, "-f", "%M", "-o", rss_file.name, *cmd] if GNU_TIME else cmd
        start = time.perf_counter()
        proc = subprocess.Popen(full, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            raise SystemExit(
                f"benchmark command failed ({code}): {' '.join(cmd)}\n"
                + err.read().decode(errors="replace")
            )
        rss = int(Path(rss_file.name).read_text().split()[-1]) if GNU_TIME else usage.ru_maxrss
    return wall, rss


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_tool(tool: str, dsn: str, ds: Dataset, work: Path, jobs: int) -> tuple[float, int, int]:
    env = libpq_env(dsn)
    out = work / f"{tool}-{time.monotonic_ns()}"
    pg = bindir()
    t_args = [a for t in ds.tables for a in ("-t", t)]
    if tool == "asyncsnap":
        cmd = [
            sys.executable,
            "-m",
            "asyncsnap",
            "dump",
            dsn,
            "-o",
            str(out),
            "-j",
            str(jobs),
            "--quiet",
            "--name",
            "b",
            *t_args,
        ]
    elif tool == "pg_dump":
        cmd = [
            str(pg / "pg_dump"),
            "-d",
            dsn,
            "-Fd",
            "-j",
            str(jobs),
            "-f",
            str(out),
            "-a",
            *t_args,
        ]
    elif tool == "pg_dump_z0":
        cmd = [
            str(pg / "pg_dump"),
            "-d",
            dsn,
            "-Fd",
            "-j",
            str(jobs),
            "-Z",
            "0",
            "-f",
            str(out),
            "-a",
            *t_args,
        ]
    elif tool == "raw_copy":
        cmd = [str(pg / "psql"), "-X", "-q", "-d", dsn, "-v", "ON_ERROR_STOP=1"]
        cmd += [a for t in ds.tables for a in ("-c", f"COPY {t} TO STDOUT")]
    elif tool == "old_script":
        out.mkdir()
        cmd = [sys.executable, "-m", "benchmarks.old_script", dsn, str(out), *ds.tables]
    else:
        raise ValueError(tool)
    wall, rss = measure(cmd, env=env)
    size = dir_size(out) if out.exists() else 0
    shutil.rmtree(out, ignore_errors=True)
    return wall, rss, size


TOOLS = {
    "asyncsnap": "asyncsnap dump -j2 (zstd)",
    "pg_dump": "pg_dump -Fd -j2 (gzip)",
    "pg_dump_z0": "pg_dump -Fd -j2 -Z0",
    "raw_copy": "raw COPY TO STDOUT",
    "old_script": "old fetchall + json.dump",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small and fast (about a minute)")
    parser.add_argument("--scale", type=int, help="pgbench scale (100k accounts rows each)")
    parser.add_argument("--mixed-rows", type=int, help="rows of the mixed-type table")
    parser.add_argument("--runs", type=int, help="runs of each tool (median is reported)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--dsn", help="use this database instead of a throwaway server")
    parser.add_argument("--skip-old", action="store_true", help="do not run the old script")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results.json")
    args = parser.parse_args()
    scale = args.scale or (2 if args.quick else 10)
    mixed_rows = args.mixed_rows or scale * 40_000
    runs = args.runs or (2 if args.quick else 3)

    with server(args.dsn) as dsn, tempfile.TemporaryDirectory(prefix="asyncsnap-bench-") as tmp:
        work = Path(tmp)
        print(f"building datasets: pgbench scale {scale}, mixed {mixed_rows} rows ...", flush=True)
        subprocess.run(
            [str(bindir() / "pgbench"), "-i", "-q", "-s", str(scale), dsn],
            check=True,
            capture_output=True,
            env=libpq_env(dsn),
        )
        anyio.run(_execute, dsn, MIXED_SQL.replace("$ROWS", str(mixed_rows)), backend="asyncio")
        anyio.run(_execute, dsn, "VACUUM ANALYZE", backend="asyncio")  # hint bits, stats
        datasets = [Dataset("pgbench", PGBENCH_TABLES), Dataset("mixed", ["mixed"])]
        for ds in datasets:
            for t in ds.tables:
                ds.rows += anyio.run(_fetchval, dsn, f"SELECT count(*) FROM {t}", backend="asyncio")
                ds.table_bytes += anyio.run(
                    _fetchval, dsn, f"SELECT pg_table_size('{t}')", backend="asyncio"
                )

        tool_names = [t for t in TOOLS if not (t == "old_script" and args.skip_old)]
        results: dict[str, dict[str, Tool]] = {ds.name: {} for ds in datasets}
        for ds in datasets:
            for name in tool_names:
                results[ds.name][name] = Tool(name, TOOLS[name])
            run_tool("asyncsnap", dsn, ds, work, args.jobs)  # warm-up: cache and imports
            for r in range(runs):
                # Alternate the order each round so drift does not favour one tool.
                order = tool_names if r % 2 == 0 else list(reversed(tool_names))
                for name in order:
                    results[ds.name][name].runs.append(run_tool(name, dsn, ds, work, args.jobs))
                    print(".", end="", flush=True)
        print()
        report(datasets, results, scale=scale, runs=runs, jobs=args.jobs, path=args.results)


def report(
    datasets: list[Dataset],
    results: dict[str, dict[str, Tool]],
    *,
    scale: int,
    runs: int,
    jobs: int,
    path: Path,
) -> None:
    out: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "scale": scale,
        "runs": runs,
        "jobs": jobs,
        "datasets": {},
    }
    for ds in datasets:
        tools = results[ds.name]
        med = {n: statistics.median(w for w, _, _ in t.runs) for n, t in tools.items()}
        print(
            f"\n{ds.name}: {ds.rows:,} rows, {ds.table_bytes / 2**20:.0f} MiB of table data, "
            f"median of {runs}"
        )
        print(
            f"{'tool':28} {'wall s':>8} {'rows/s':>12} {'MB/s':>8} {'peak RSS MiB':>13} "
            f"{'output MiB':>11}"
        )
        entry: dict[str, object] = {"rows": ds.rows, "table_bytes": ds.table_bytes, "tools": {}}
        for n, t in tools.items():
            rss = max(r for _, r, _ in t.runs) / 1024
            size = statistics.median(s for _, _, s in t.runs)
            print(
                f"{t.label:28} {med[n]:8.2f} {ds.rows / med[n]:12,.0f} "
                f"{ds.table_bytes / 1e6 / med[n]:8.1f} {rss:13.1f} {size / 2**20:11.1f}"
            )
            entry["tools"][n] = {  # type: ignore[index]
                "label": t.label,
                "median_s": med[n],
                "runs_s": [w for w, _, _ in t.runs],
                "rows_per_s": ds.rows / med[n],
                "mb_per_s": ds.table_bytes / 1e6 / med[n],
                "peak_rss_mib": rss,
                "output_bytes": size,
            }
        ratios = {
            "asyncsnap/pg_dump": med["asyncsnap"] / med["pg_dump"],
            "asyncsnap/pg_dump_z0": med["asyncsnap"] / med["pg_dump_z0"],
            "asyncsnap/raw_copy": med["asyncsnap"] / med["raw_copy"],
        }
        if "old_script" in med:
            ratios["old_script/asyncsnap"] = med["old_script"] / med["asyncsnap"]
        entry["ratios"] = ratios
        print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
        out["datasets"][ds.name] = entry  # type: ignore[index]
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()
