"""``dump --cluster``: one snapshot's chunks as tasks on a Dask cluster of worker
processes, each writing its file itself. Real servers, real local clusters, no mocks.

The central promise: the backup is the one a local dump of the same moment writes, file
for file (the same chunks, so the same bytes), readable by every command, and of one
moment although its files were written by several processes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest

from asyncsnap.cluster import ClusterAddress, without_password
from asyncsnap.connection import ConnectParams
from asyncsnap.dump import dump
from asyncsnap.errors import DumpFailed, ExitCode, UsageError
from asyncsnap.verify import verify
from tests.conftest import (
    Database,
    Postgres,
    clean_env,
    fresh_database,
    run_cli,
    start_cli,
)
from tests.helpers import read_rows
from tests.test_increment import run, table_digests
from tests.test_interrupt import BIG, _asyncsnap_backends, wait_until_writing_big
from tests.test_restore_create import admin_execute, database_named
from tests.test_restore_race import gated_backup, restore_with_a_commit_under_way
from tests.test_store_backups import cli_env
from throwaway.postgres import client_bindir
from throwaway.s3 import BUCKET, S3Server, s3_server

pytest.importorskip("distributed")

# Tables split into page ranges (--split-larger-than below) so that one table's chunks
# run on several workers, and small ones.
SCHEMA = """
CREATE TABLE public.wide (id int PRIMARY KEY, v text, n numeric, at timestamptz);
INSERT INTO public.wide SELECT g, repeat(md5(g::text), 4), g / 3.0,
    '2026-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, 40000) g;
CREATE TABLE public.small (id int PRIMARY KEY, v text);
INSERT INTO public.small SELECT g, 's' || g FROM generate_series(1, 50) g;
CREATE TABLE public.other (a int, b jsonb);
INSERT INTO public.other SELECT g, jsonb_build_object('g', g) FROM generate_series(1, 3000) g;
"""


def data_sums(path: Path) -> list[str]:
    """The SHA256SUMS lines of the data files."""
    return sorted(x for x in (path / "SHA256SUMS").read_text().splitlines() if " data/" in x)


def test_a_cluster_dump_is_a_local_dumps_files_and_restores(db: Database, tmp_path: Path) -> None:
    db.execute(SCHEMA)
    local = run(dump, db.dsn, output=tmp_path, name="local", split_larger_than=256 << 10)
    spread = run(
        dump,
        db.dsn,
        output=tmp_path,
        name="spread",
        split_larger_than=256 << 10,
        cluster="local:2",
    )
    assert len(spread.written.tables[0].files) > 1 or any(
        len(t.files) > 1 for t in spread.written.tables
    )
    assert data_sums(tmp_path / "spread") == data_sums(tmp_path / "local")
    assert local.rows == spread.rows
    assert verify(tmp_path / "spread").ok
    # nothing but the backup's own files (no worker's temporary file, no check file)
    listed = {
        x.split("  ", 1)[1] for x in (tmp_path / "spread" / "SHA256SUMS").read_text().splitlines()
    }
    found = {
        p.relative_to(tmp_path / "spread").as_posix()
        for p in (tmp_path / "spread").rglob("*")
        if p.is_file()
    }
    assert found - listed == {"SHA256SUMS", "manifest.json"}


def test_a_cluster_dump_under_pgbench_load_is_one_moment_across_the_workers_files(
    db: Database, tmp_path: Path
) -> None:
    """`pgbench` runs while `dump --cluster local:2` writes pgbench_accounts in page
    ranges, each a task on a worker importing the one snapshot: the files add up to
    pgbench's invariant (the accounts', tellers' and branches' balances and the history's
    deltas, four equal sums), and hold a moment inside the dump, with pgbench's
    transactions committed before and after it."""
    bindir = client_bindir(db.server_version // 10000)
    subprocess.run(
        [str(bindir / "pgbench"), "-i", "-s", "2", "-q", db.dsn], check=True, capture_output=True
    )
    db.execute("ANALYZE")
    load = subprocess.Popen(
        [str(bindir / "pgbench"), "-n", "-T", "120", "-c", "2", db.dsn],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        history = "SELECT count(*) FROM public.pgbench_history"
        deadline = time.monotonic() + 30
        while db.fetchval(history) < 100:
            assert load.poll() is None and time.monotonic() < deadline, "pgbench did not run"
            time.sleep(0.05)
        before = db.fetchval(history)
        result = run(
            dump, db.dsn, output=tmp_path, name="b", split_larger_than=2 << 20, cluster="local:2"
        )
        after = db.fetchval(history)
    finally:
        load.terminate()
        load.wait(timeout=30)
    rows = read_rows(result.path)
    accounts = [t for t in result.written.tables if t.name == "pgbench_accounts"]
    assert len(accounts[0].files) > 4, accounts  # spread over the workers

    def total(table: str, column: str) -> int:
        return sum(int(r[column]) for r in rows[("public", f"pgbench_{table}")])

    sums = {
        "accounts": total("accounts", "abalance"),
        "tellers": total("tellers", "tbalance"),
        "branches": total("branches", "bbalance"),
        "history": total("history", "delta"),
    }
    assert len(set(sums.values())) == 1, sums
    assert len(rows[("public", "pgbench_accounts")]) == 200_000
    moment = len(rows[("public", "pgbench_history")])
    assert before < moment < after, (before, moment, after)
    assert verify(result.path).ok


def test_a_worker_killed_mid_chunk_leaves_an_exact_backup(db: Database, tmp_path: Path) -> None:
    """SIGKILL of a worker process while it copies: the scheduler runs its task again on
    another worker, and the backup is the local dump's, file for file, with no stray
    file (the killed run's temporary file is removed by the coordinator)."""
    _big_wide_and_its_local_dump(db, tmp_path)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_copying_worker, args=(db, killed))
    killer.start()
    try:
        run(
            dump,
            db.dsn,
            output=tmp_path,
            name="spread",
            split_larger_than=1 << 20,
            cluster="local:2",
        )
    finally:
        killer.join()
    assert killed, "no worker was killed: the test did not test anything"
    assert data_sums(tmp_path / "spread") == data_sums(tmp_path / "local")
    assert verify(tmp_path / "spread").ok
    assert not list((tmp_path / "spread").rglob(".*.tmp"))


def _worker_pids() -> list[int]:
    """The Dask worker processes this process started (a local cluster's nannies run in
    it; each worker process names itself ``dask worker [address]``)."""
    return [pid for pid in _dask_workers() if _descends(_ppid(pid), os.getpid())]


def _dask_workers() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"dask worker"):
            found.append(int(entry.name))
    return sorted(found)


def _ppid(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(next(x for x in status.splitlines() if x.startswith("PPid:")).split()[1])


def _descends(pid: int, ancestor: int) -> bool:
    for _ in range(5):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        pid = _ppid(pid)
    return False


@contextlib.contextmanager
def dask_cluster(password: str, **worker_env: str) -> Iterator[str]:
    """A scheduler and two workers started as users start them (the dask commands), the
    workers' environment holding ``PGPASSWORD`` (and ``worker_env``)."""
    with dask_scheduler() as (address, procs):
        procs += start_dask_workers(address, password, **worker_env)
        _wait_for_workers(address, 2)
        yield address


def _wait_for_workers(address: str, count: int) -> None:
    """Until ``count`` workers have joined the scheduler. A run waits for one worker only;
    started while the second was still joining, it gave the first every unit, one after
    another, and a test of two units at once (one failing while another loads) saw the
    other committed before the failure (CI, 2026-12-06)."""
    from distributed import Client

    with Client(address, timeout=60) as client:  # type: ignore[no-untyped-call]
        client.wait_for_workers(count, timeout=60)


_DASK = str(Path(sys.executable).parent / "dask")
_QUIET: Any = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


@contextlib.contextmanager
def dask_scheduler() -> Iterator[tuple[str, list[subprocess.Popen[Any]]]]:
    """A `dask scheduler` alone: its address, and a list of processes (it, and what the
    caller adds) stopped afterwards."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            [_DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            **_QUIET,
        )
    ]
    try:
        yield f"tcp://127.0.0.1:{port}", procs
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_dask_workers(address: str, password: str, **env: str) -> list[subprocess.Popen[Any]]:
    """Two `dask worker` processes (w0, w1) with ``PGPASSWORD`` (and ``env``)."""
    return [
        subprocess.Popen(
            [_DASK, "worker", address, "--nthreads", "1", "--name", f"w{i}", "--no-nanny"],
            env={**clean_env(), "PGPASSWORD": password, **env},
            **_QUIET,
        )
        for i in range(2)
    ]


def test_a_dump_waits_for_workers_that_join_late_and_fails_without_any(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduler whose workers are not there yet (started with it, they join a second
    or two later): the dump waits for one, then runs; a scheduler no worker joins fails
    the dump with one error saying so, and leaves nothing."""
    import asyncsnap.cluster

    db.execute(SCHEMA)
    monkeypatch.setattr(asyncsnap.cluster, "WORKERS_TIMEOUT", 3.0)
    password = urlsplit(db.dsn).password or ""
    with dask_scheduler() as (address, procs):
        with pytest.raises(DumpFailed, match="no worker joined the Dask scheduler"):
            run(dump, db.dsn, output=tmp_path, name="none", cluster=address)
        assert list(tmp_path.iterdir()) == []
        monkeypatch.setattr(asyncsnap.cluster, "WORKERS_TIMEOUT", 60.0)
        late = threading.Timer(1.0, lambda: procs.extend(start_dask_workers(address, password)))
        late.start()
        try:
            done = run(dump, db.dsn, output=tmp_path, name="late", cluster=address)
        finally:
            late.join()
        assert verify(done.path).ok


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_cluster_of_dask_scheduler_and_dask_worker_commands(db: Database, tmp_path: Path) -> None:
    """A cluster started with `dask scheduler` and `dask worker`: with the password in the
    workers' environment (never in a task) the backup is the local dump's; without it the
    dump fails naming a worker and the cause, and leaves nothing that looks complete."""
    db.execute(SCHEMA)
    run(dump, db.dsn, output=tmp_path, name="local", split_larger_than=256 << 10)
    password = urlsplit(db.dsn).password or ""
    with dask_cluster(password) as address:
        done = run_cli(
            "dump",
            db.dsn,
            "-o",
            str(tmp_path),
            "--name",
            "spread",
            "--cluster",
            address,
            "--split-larger-than",
            "256kB",
            env=clean_env(),
        )
        assert done.returncode == 0, done.stderr
        assert data_sums(tmp_path / "spread") == data_sums(tmp_path / "local")
    with dask_cluster("not-the-password") as address:
        done = run_cli(
            "dump",
            db.dsn,
            "-o",
            str(tmp_path),
            "--name",
            "refused",
            "--cluster",
            address,
            env=clean_env(),
        )
        assert done.returncode == ExitCode.CONNECTION, done.stderr
        assert "worker w" in done.stderr and "password" in done.stderr, done.stderr
        assert not (tmp_path / "refused").exists()


def test_cluster_addresses_and_the_password_a_task_never_carries() -> None:
    assert ClusterAddress.parse("local:4").local_workers == 4
    assert ClusterAddress.parse("tcp://10.0.0.1:8786").local_workers is None
    for wrong in ("local:0", "local:x", "10.0.0.1:8786", "tcp://", "local:1000"):
        with pytest.raises(UsageError, match="neither a scheduler address nor local:N"):
            ClusterAddress.parse(wrong)
    params = ConnectParams("postgresql://app:s%40cret@db:5432/shop?sslmode=require&password=x")
    carried, password = without_password(params)
    assert carried.uri == "postgresql://app@db:5432/shop?sslmode=require"
    assert password == "x"  # the query's wins, as libpq's
    carried, password = without_password(ConnectParams("postgresql://app:s%40cret@db/shop"))
    assert carried.uri == "postgresql://app@db/shop" and password == "s@cret"
    assert without_password(ConnectParams(None)) == (ConnectParams(None), None)


def test_a_local_directory_workers_cannot_see_is_refused(db: Database, tmp_path: Path) -> None:
    """The coordinator's check file is looked for by every worker; a worker on another
    machine (here: the check file removed before the workers look) refuses the dump."""
    import asyncsnap.cluster as cluster

    db.execute(SCHEMA)
    real = cluster._sees
    try:
        cluster._sees = lambda path, content: False
        with pytest.raises(UsageError, match="cannot see"):
            run(dump, db.dsn, output=tmp_path, name="spread", cluster="local:1")
    finally:
        cluster._sees = real
    assert not (tmp_path / "spread").exists()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


def test_an_encrypted_cluster_dump_to_a_bucket_from_the_command_line(
    s3: S3Server, db: Database, tmp_path: Path
) -> None:
    """dump --cluster local:2 straight to a bucket, encrypted: each worker writes its own
    objects (the store's credentials from its environment, the key a public one); the
    backup verifies with the key and restores to the source's rows."""
    from pyrage import x25519

    db.execute(SCHEMA)
    identity = x25519.Identity.generate()
    key = tmp_path / "key.txt"
    key.write_text(f"{identity}\n")
    env = cli_env(s3)
    prefix = f"s3://{BUCKET}/spread"
    done = run_cli(
        "dump", db.dsn, "-o", prefix, "--name", "enc", "--cluster", "local:2",
        "--split-larger-than", "256kB", "--encrypt-to", str(identity.to_public()), env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{prefix}/enc"
    checked = run_cli("verify", f"{prefix}/enc", "--identity", str(key), env=env)
    assert checked.returncode == 0, checked.stderr
    spread = run_cli(
        "verify", f"{prefix}/enc", "--identity", str(key), "--cluster", "local:2", env=env
    )
    assert spread.returncode == 0, spread.stderr
    assert spread.stdout.split(" checked in ")[0] == checked.stdout.split(" checked in ")[0]
    with fresh_database(db.postgres, "cluster_target") as target:
        restored = run_cli(
            "restore", f"{prefix}/enc", target.dsn, "--identity", str(key),
            "--cluster", "local:2", env=env,
        )  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        assert table_digests(target.dsn) == table_digests(db.dsn)


def test_sigterm_of_the_coordinator_keeps_nothing_and_stops_the_workers(
    db: Database, tmp_path: Path
) -> None:
    """SIGTERM while the workers write: exit 143, nothing left that looks complete (the
    partial directory removed, as a local dump's), no worker process and no session of
    the dump's left behind."""
    proc, workers = _cluster_dump_writing_big(db, tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [], sorted(map(str, tmp_path.rglob("*")))
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, "a worker process outlived the dump"
        time.sleep(0.1)
    assert anyio.run(_asyncsnap_backends, db.dsn, backend="asyncio") == 0


def test_ctrl_c_at_a_terminal_stops_a_cluster_dump_with_one_line(
    db: Database, tmp_path: Path
) -> None:
    """SIGINT to the whole process group, as Ctrl-C at a terminal sends it, while a local
    cluster's workers write: the coordinator stops the dump as for SIGINT alone (exit 130,
    one line, nothing kept, no worker left), and the workers print nothing of their own
    (each showed KeyboardInterrupt tracebacks from Dask's event loop)."""
    db.execute(BIG)
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncsnap", "dump", db.dsn, "-o", str(tmp_path), "--name", "b",
         "--compress", "none", "--cluster", "local:2"],
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # a group of its own, as a terminal's foreground job
    )  # fmt: skip
    try:
        wait_until_writing_big(proc, tmp_path / "b.partial")
        workers = _worker_pids_of(proc.pid)
        assert workers
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted by SIGINT" in err, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert list(tmp_path.iterdir()) == [], sorted(map(str, tmp_path.rglob("*")))
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker process outlived the dump"
        time.sleep(0.1)
    assert anyio.run(_asyncsnap_backends, db.dsn, backend="asyncio") == 0


STARTING_SCRIPT = """
import os, sys
from pathlib import Path

import anyio

from asyncsnap.cluster import ClusterAddress, background_cluster
from asyncsnap.connection import ConnectParams


def children(pid):
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


async def body_fails_as_workers_start(delay):
    async with background_cluster(ClusterAddress.parse("local:2"), ConnectParams(None)):
        while not any(children(k) for k in children(os.getpid())):  # the fork server's
            await anyio.sleep(0.002)
        await anyio.sleep(delay)
        raise RuntimeError("the body failed as the workers started")


if __name__ == "__main__":
    try:
        anyio.run(body_fails_as_workers_start, float(sys.argv[1]))
    except RuntimeError as exc:
        print(f"failed: {exc}")
"""


@pytest.mark.parametrize("delay", [0.02, 0.05, 0.08])
def test_a_run_failing_as_its_local_cluster_starts_stops_it_without_a_traceback(
    delay: float,
) -> None:
    """The run fails (a row its target refuses, a signal) just as its local cluster's
    workers are being forked: the cluster is let finish starting, then closed, and the
    failure is the run's own. (Stopped mid-start, the workers printed multiprocessing's
    and Dask's tracebacks, about 70 lines, after the restore's one error line: a
    semaphore gone as a worker unpickled its process, "Nanny failed to start".)"""
    done = subprocess.run(
        [sys.executable, "-c", STARTING_SCRIPT, str(delay)], env=clean_env(),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "failed: the body failed as the workers started"
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr


ENVIRONMENT_SCRIPT = """
import json, logging, os, sys
import anyio
from asyncsnap.cluster import ClusterAddress, cluster_client

def seen(dask_worker):
    names = ("ASYNCSNAP_T_GONE", "ASYNCSNAP_T_NEW", "PGPASSWORD")
    started = open("/proc/self/environ", "rb").read().split(b"\\0")  # the process's start
    trim = [x.decode() for x in started if x.startswith(b"MALLOC_TRIM_THRESHOLD_=")]
    profiling = "profile" in dask_worker.periodic_callbacks
    # what a worker logs when a heartbeat meets the scheduler closing, and another error
    log = logging.getLogger("distributed.worker")
    try:
        raise OSError("Stream is closed")
    except OSError:
        log.exception("Failed to communicate with scheduler during heartbeat.")
        log.exception("another error of the worker's, kept")
    return {**{k: os.environ.get(k) for k in names}, "trim": trim, "profiling": profiling}

async def workers(password):
    async with cluster_client(ClusterAddress.parse("local:1"), password) as client:
        return list((await client.run(seen)).values())

if __name__ == "__main__":
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    os.environ["ASYNCSNAP_T_GONE"] = "1"
    first = anyio.run(workers, None)
    del os.environ["ASYNCSNAP_T_GONE"]
    os.environ["ASYNCSNAP_T_NEW"] = "2"
    print(json.dumps([first, anyio.run(workers, "pw")]))
"""


def test_a_local_clusters_workers_have_the_environment_of_when_it_starts() -> None:
    """A local cluster's workers are forked from a fork server that lives as long as the
    process; they still have the environment of when their cluster starts, as spawned
    workers did: a variable set since is there (a store's credentials), one unset since
    is not, and the connection's password is given to them. They start with glibc's own
    trim threshold, as a local dump's process does, not the 64 KiB Dask gives a worker
    (which had the cluster's dump 2.04-2.20 times the local one, against 1.81-1.83), and
    without Dask's statistical profiler (a local cluster has no dashboard to show it).
    A heartbeat meeting the scheduler as it closes is not logged (Dask's race as a local
    cluster closes, dask/distributed#7105: a traceback after a run that went well); the
    worker's other errors are."""
    done = subprocess.run(
        [sys.executable, "-c", ENVIRONMENT_SCRIPT], env=clean_env(), capture_output=True,
        text=True, timeout=120, check=True,
    )  # fmt: skip
    first, second = json.loads(done.stdout.splitlines()[-1])
    assert done.stderr.count("another error of the worker's, kept") == 2, done.stderr
    assert "during heartbeat" not in done.stderr, done.stderr
    assert first == [
        {
            "ASYNCSNAP_T_GONE": "1",
            "ASYNCSNAP_T_NEW": None,
            "PGPASSWORD": None,
            "trim": [],
            "profiling": False,
        }
    ]
    assert second == [
        {
            "ASYNCSNAP_T_GONE": None,
            "ASYNCSNAP_T_NEW": "2",
            "PGPASSWORD": "pw",
            "trim": [],
            "profiling": False,
        }
    ]


def test_without_the_cluster_extra_dump_and_restore_say_what_to_install(
    db: Database, tmp_path: Path
) -> None:
    """``--cluster local:N`` where distributed cannot be imported: one error line and the
    extra to install, exit 2, no traceback, nothing written; for a dump (whose cluster
    starts first) and a restore (whose fork server starts as it plans)."""
    db.execute(SCHEMA)
    run(dump, db.dsn, output=tmp_path, name="b")
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "distributed.py").write_text("raise ImportError('no distributed here')\n")
    env = clean_env() | {"PYTHONPATH": str(missing)}
    out = tmp_path / "out"
    for args in (
        ("dump", db.dsn, "-o", str(out), "--cluster", "local:2"),
        ("restore", str(tmp_path / "b"), db.dsn, "--cluster", "local:2"),
    ):
        done = run_cli(*args, env=env)
        assert done.returncode == ExitCode.USAGE, done.stderr
        assert "--cluster needs Dask's distributed" in done.stderr, done.stderr
        assert "pip install 'asyncsnap[cluster]'" in done.stderr
        assert "Traceback" not in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_a_killed_coordinator_leaves_no_worker_and_no_session_holding_the_snapshot(
    db: Database, tmp_path: Path
) -> None:
    """SIGKILL of the coordinator while a local cluster's workers write: its workers end
    with it, and no session of the dump's stays, the coordinator's own (which holds the
    snapshot back from VACUUM) included; nothing looks complete. (Workers forked from the
    coordinator itself hold copies of its sockets and of each other's pipes that tell a
    worker its parent is gone: once in five such kills by hand, two lived on, and the
    snapshot's session with them. This test did not catch that in three runs.)"""
    proc, workers = _cluster_dump_writing_big(db, tmp_path)
    proc.kill()
    proc.communicate()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its coordinator"
        time.sleep(0.1)
    assert anyio.run(_asyncsnap_backends, db.dsn, backend="asyncio") == 0
    assert not list(tmp_path.rglob("manifest.json"))


def test_a_worker_sent_sigterm_is_restarted_and_the_dump_goes_on(
    db: Database, tmp_path: Path
) -> None:
    """SIGTERM to one of a local cluster's workers while they write: that worker ends, its
    task runs again, and the dump completes (exit 0, a backup that verifies). A worker
    forked from the coordinator itself shared its signal wake-up pipe: the SIGTERM reached
    the coordinator's handler, which stopped the whole dump (exit 143)."""
    proc, workers = _cluster_dump_writing_big(db, tmp_path)
    try:
        os.kill(workers[0], signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert verify(str(tmp_path / "b")).ok


def _cluster_dump_writing_big(
    db: Database, tmp_path: Path
) -> tuple[subprocess.Popen[str], list[int]]:
    """A ``dump --cluster local:2`` of ``BIG`` into ``tmp_path / "b"``, once it writes the
    big table, and its workers' process ids."""
    db.execute(BIG)
    proc = start_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b", "--compress", "none",
                     "--cluster", "local:2")  # fmt: skip
    try:
        wait_until_writing_big(proc, tmp_path / "b.partial")
        workers = _worker_pids_of(proc.pid)
        assert workers
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc, workers


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet waited for, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_sigterm_of_the_coordinator_stops_a_remote_workers_upload(
    s3: S3Server, db: Database, tmp_path: Path
) -> None:
    """Workers the dump did not start (``dask worker``) outlive the coordinator: SIGTERM
    while one streams the big table into the bucket stops its task too, and the backup's
    prefix is left empty (no object finished after the clean-up removed the others)."""
    from asyncsnap.storage.s3 import S3Store, StoreUrl

    db.execute(BIG)
    password = urlsplit(db.dsn).password or ""
    prefix = f"s3://{BUCKET}/remote-term"
    with dask_cluster(password, **cli_env(s3)) as address:
        proc = start_cli("dump", db.dsn, "-o", prefix, "--name", "b", "--compress", "none",
                         "--cluster", address, env=cli_env(s3))  # fmt: skip
        try:
            anyio.run(_copying_big, db.dsn, proc, backend="asyncio")
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 143, err
        assert "interrupted by SIGTERM" in err and "Traceback" not in err, err
        # The workers live on: give a task that did not stop the time to finish its file.
        assert anyio.run(_asyncsnap_backends, db.dsn, backend="asyncio") == 0
        time.sleep(1)
    store = S3Store(StoreUrl.parse(prefix), environ=s3.env())
    assert [o.key for o in store.objects()] == []


async def _copying_big(dsn: str, proc: subprocess.Popen[Any]) -> None:
    """Return once a session of the dump has been copying public.big for half a second."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        with anyio.fail_after(60):
            while not await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'asyncsnap' "
                "AND query LIKE 'COPY%big%' AND now() - query_start > interval '0.5 s'"
            ):
                if proc.poll() is not None:
                    raise AssertionError(f"the dump ended first: {proc.communicate()[1]}")
                await anyio.sleep(0.05)
    finally:
        await conn.close()


def _worker_pids_of(parent: int) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [pid for pid in _dask_workers() if _descends(_ppid(pid), parent)]
        if found:
            return found
        time.sleep(0.05)
    return []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_verify_on_a_cluster_with_one_line_and_no_process_left(
    db: Database, tmp_path: Path, signum: signal.Signals
) -> None:
    """verify --cluster stopped while a worker checks a file: one error line and the
    signal's exit code, no process left (SIGTERM killed verify without a word, its
    workers' semaphores leaked; SIGINT printed the engine's tracebacks). The worker is held
    inside its check by the key of an encrypted backup given as a FIFO: the coordinator
    reads it once, the worker then waits on it."""
    from pyrage import x25519

    db.execute(SCHEMA)
    identity = x25519.Identity.generate()
    run(dump, db.dsn, output=tmp_path, name="b", encrypt_to=[str(identity.to_public())])
    key = tmp_path / "key"
    os.mkfifo(key)
    proc = start_cli("verify", str(tmp_path / "b"), "--identity", str(key), "--cluster",
                     "local:2")  # fmt: skip
    try:
        with open(key, "w") as fifo:  # what the coordinator reads
            fifo.write(f"{identity}\n")
        deadline = time.monotonic() + 60
        while True:  # until the coordinator has closed the key (no reader left)
            try:
                os.close(os.open(key, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                break
            assert time.monotonic() < deadline, "the coordinator kept the key open"
            time.sleep(0.01)
        while True:  # a writer opens without waiting once a worker waits to read the key
            try:
                held = os.open(key, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "no worker read the key"
                time.sleep(0.05)
        try:
            workers = _worker_pids_of(proc.pid)
            assert workers
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=60)
        finally:
            os.close(held)
    finally:
        proc.kill()
    code = ExitCode.SIGINT if signum == signal.SIGINT else ExitCode.SIGTERM
    assert proc.returncode == code, err
    assert err.splitlines() == [
        f"error: interrupted by {signum.name}; the backup was not checked to the end"
    ], err
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, "a worker process outlived verify"
        time.sleep(0.1)


def test_verify_on_a_cluster_finds_what_verify_finds(db: Database, tmp_path: Path) -> None:
    """A damaged byte in one data file: verify --cluster names the same file and problem,
    exit 5, as the local verify; a whole backup: the same counts."""
    db.execute(SCHEMA)
    run(dump, db.dsn, output=tmp_path, name="b", split_larger_than=256 << 10)
    whole = verify(tmp_path / "b", cluster="local:2")
    assert whole.ok and whole.rows == verify(tmp_path / "b").rows
    damaged = sorted((tmp_path / "b" / "data").glob("public.wide-*"))[1]
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    local = run_cli("verify", str(tmp_path / "b"), env=clean_env())
    spread = run_cli("verify", str(tmp_path / "b"), "--cluster", "local:2", env=clean_env())
    assert local.returncode == spread.returncode == ExitCode.VERIFY
    assert spread.stderr == local.stderr and damaged.name in spread.stderr


def test_a_restore_on_a_cluster_is_the_source_and_refuses_one_transaction(
    db: Database, tmp_path: Path
) -> None:
    """A whole restore whose rows are loaded by two worker processes (split tables' files
    on both, parents before children): every table equals the source's; what must be one
    transaction is refused before anything is touched."""
    db.execute(SCHEMA)
    db.execute(
        "CREATE TABLE public.child (id int PRIMARY KEY, wide int REFERENCES public.wide (id));"
        "INSERT INTO public.child SELECT g, g FROM generate_series(1, 500) g"
    )
    run(dump, db.dsn, output=tmp_path, name="b", split_larger_than=256 << 10)
    with fresh_database(db.postgres, "cluster_target") as target:
        done = run_cli(
            "restore", str(tmp_path / "b"), target.dsn, "--cluster", "local:2", env=clean_env()
        )
        assert done.returncode == 0, done.stderr
        assert table_digests(target.dsn) == table_digests(db.dsn)
    with fresh_database(db.postgres, "cluster_target") as target:
        for option in ("--single-transaction", "--truncate"):
            done = run_cli(
                "restore", str(tmp_path / "b"), target.dsn, "--cluster", "local:2", option,
                env=clean_env(),
            )  # fmt: skip
            assert done.returncode == ExitCode.USAGE, done.stderr
            assert f"{option} loads every row in one transaction" in done.stderr
        assert target.fetchval("SELECT count(*) FROM pg_class WHERE relname = 'wide'") == 0


@contextlib.contextmanager
def _table_being_created(dsn: str, name: str) -> Iterator[None]:
    """Another session's transaction that has created ``name`` and not committed: a
    CREATE TABLE of the same name waits for it, until the block ends (rolled back)."""
    import asyncpg

    created, done = threading.Event(), threading.Event()

    async def hold() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await conn.execute(f"CREATE TABLE {name} (x int)")
                created.set()
                await asyncio.to_thread(done.wait)
                raise _RolledBack
        except _RolledBack:
            pass
        finally:
            await conn.close()

    thread = threading.Thread(target=asyncio.run, args=(hold(),))
    thread.start()
    try:
        assert created.wait(30), "the other session did not create its table"
        yield
    finally:
        done.set()
        thread.join(30)


class _RolledBack(Exception):
    pass


def test_a_restores_cluster_starts_with_it_and_a_signal_in_its_pre_data_stops_it(
    db: Database, tmp_path: Path
) -> None:
    """restore --cluster starts its cluster as it begins: the workers are up while the
    schema is still being created (they started only when rows loaded, after the
    engine's import held the restore's first queries back). SIGTERM then, pre-data
    waiting on another session: exit 143, one line, no worker and no session left."""
    db.execute(SCHEMA)
    run(dump, db.dsn, output=tmp_path, name="b")
    with fresh_database(db.postgres, "cluster_target") as target:
        with _table_being_created(target.dsn, "public.wide"):
            proc = start_cli("restore", str(tmp_path / "b"), target.dsn, "--cluster", "local:2")
            try:
                workers = _worker_pids_of(proc.pid)
                assert workers, "no worker started while the restore created its schema"
                assert proc.poll() is None, proc.communicate()
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=60)
            finally:
                proc.kill()
        assert proc.returncode == ExitCode.SIGTERM, err
        assert "interrupted by SIGTERM" in err and "Traceback" not in err, err
        deadline = time.monotonic() + 20
        while any(Path(f"/proc/{pid}").exists() for pid in workers):
            assert time.monotonic() < deadline, "a worker process outlived the restore"
            time.sleep(0.1)
        assert anyio.run(_asyncsnap_backends, target.dsn, backend="asyncio") == 0


def test_two_cluster_dumps_at_once_do_not_contend_for_a_port(db: Database, tmp_path: Path) -> None:
    """Two local clusters in one process at once (two dumps): each scheduler's HTTP
    endpoints on a free port of its own (the default :8787 made the second warn, and
    the tests turn warnings into errors)."""
    db.execute(SCHEMA)

    async def both() -> None:
        async with anyio.create_task_group() as tg:
            for name in ("one", "two"):
                (tmp_path / name).mkdir()
                tg.start_soon(
                    partial(dump, db.dsn, output=tmp_path / name, name="b", cluster="local:1")
                )

    anyio.run(both, backend="asyncio")
    assert data_sums(tmp_path / "one" / "b") == data_sums(tmp_path / "two" / "b")


def test_workers_killed_mid_upload_leave_an_exact_backup_and_no_stray_object(
    s3: S3Server, db: Database, tmp_path: Path
) -> None:
    """SIGKILL of a worker while chunks stream into a bucket: its task runs again, the
    backup verifies and holds the local dump's rows, and the backup's prefix holds
    exactly its listed files, SHA256SUMS, the manifest and the claim."""
    from asyncsnap.storage.s3 import S3Store, StoreUrl
    from asyncsnap.storage.store import open_object

    _big_wide_and_its_local_dump(db, tmp_path)
    killed: list[int] = []
    env = s3.env()
    os.environ.update(env)  # the coordinator's store client, and its workers' (inherited)
    try:
        killer = threading.Thread(target=_kill_a_copying_worker, args=(db, killed))
        killer.start()
        try:
            run(
                dump,
                db.dsn,
                output=f"s3://{BUCKET}/killed",
                name="spread",
                split_larger_than=1 << 20,
                cluster="local:2",
            )
        finally:
            killer.join()
        assert killed, "no worker was killed: the test did not test anything"
        assert verify(f"s3://{BUCKET}/killed/spread").ok
        store = S3Store(StoreUrl.parse(f"s3://{BUCKET}/killed/spread"), environ=env)
        found = {o.key for o in store.objects()}
        sums = open_object(store, "SHA256SUMS").read().decode().splitlines()
    finally:
        for key in env:
            os.environ.pop(key, None)
    assert sorted(x for x in sums if " data/" in x) == data_sums(tmp_path / "local")
    listed = {x.split("  ", 1)[1] for x in sums}
    assert found == listed | {"SHA256SUMS", "manifest.json", "claim.json"}


def _big_wide_and_its_local_dump(db: Database, tmp_path: Path) -> None:
    """The schema with public.wide grown to 200,000 longer rows (copied in several 1 MB
    chunks, long enough to be killed in), and a local dump of it, ``local``."""
    db.execute(SCHEMA)
    db.execute(
        "INSERT INTO public.wide SELECT g, repeat(md5(g::text), 40), g, now()"
        " FROM generate_series(40001, 200000) g"
    )
    run(dump, db.dsn, output=tmp_path, name="local", split_larger_than=1 << 20)


def _kill_a_copying_worker(db: Database, killed: list[int]) -> None:
    """SIGKILL one of this process's Dask workers once a COPY of the dump runs."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not killed:
        rows = db.fetch(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE 'COPY %'"
            " AND application_name = 'asyncsnap' AND pid <> pg_backend_pid()"
        )
        if rows[0]["n"]:
            for pid in _worker_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
        time.sleep(0.02)


def test_a_worker_without_the_stores_credentials_fails_the_dump_naming_it(
    s3: S3Server, db: Database, tmp_path: Path
) -> None:
    """Workers whose environment has no credentials for the bucket (the coordinator has
    them): one error naming a worker and the store's refusal, and no backup."""
    from asyncsnap.storage.s3 import S3Store, StoreUrl

    db.execute(SCHEMA)
    password = urlsplit(db.dsn).password or ""
    no_keys = {**cli_env(s3), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    with dask_cluster(password, **no_keys) as address:
        done = run_cli(
            "dump", db.dsn, "-o", f"s3://{BUCKET}/nokeys", "--name", "x", "--cluster", address,
            env=cli_env(s3),
        )  # fmt: skip
    assert done.returncode == ExitCode.OUTPUT, done.stderr
    assert "worker w" in done.stderr, done.stderr
    store = S3Store(StoreUrl.parse(f"s3://{BUCKET}/nokeys"), environ=s3.env())
    assert not [o.key for o in store.objects() if o.key.endswith("manifest.json")]


def test_a_backup_the_workers_cannot_read_is_refused_before_rows_load(
    db: Database, tmp_path: Path
) -> None:
    """restore --cluster asks every worker to open the backup where the coordinator found
    it (here: a worker elsewhere, that answers no): refused, naming the worker, before a
    row is loaded."""
    from asyncsnap.api import restore

    # (``import asyncsnap.restore.spread as`` finds the package's lazy ``restore``
    # function under that name first)
    spread: Any = importlib.import_module("asyncsnap.restore.spread")

    db.execute(SCHEMA)
    run(dump, db.dsn, output=tmp_path, name="b")
    real = spread.sees_backup
    password = urlsplit(db.dsn).password or ""
    try:
        spread.sees_backup = lambda location, checksum: False
        with (
            fresh_database(db.postgres, "cluster_target") as target,
            dask_cluster(password) as address,
        ):
            with pytest.raises(UsageError, match="cannot read the backup at"):
                run(restore, tmp_path / "b", target.dsn, cluster=address)
            assert target.fetchval("SELECT count(*) FROM public.wide") == 0
    finally:
        spread.sees_backup = real


def _restore_with_the_cluster_held_back(
    db: Database, tmp_path: Path, held_back: Any
) -> tuple[Database, list[Any]]:
    """restore --cluster local:2 of ``SCHEMA`` (a table in 30 files) with the rows'
    wait for the cluster replaced by ``held_back(real, workers, events, loaded)``
    (``loaded``: set as the first unit is loaded); the target's tables then, and the
    restore's events."""
    from asyncsnap.api import restore
    from asyncsnap.events import ChunkFinished

    spread: Any = importlib.import_module("asyncsnap.restore.spread")
    db.execute(SCHEMA)
    run(dump, db.dsn, output=tmp_path, name="b", split_larger_than=256 << 10)
    real = spread._Workers.client
    events: list[Any] = []
    loaded: list[anyio.Event] = []

    def on_event(event: Any) -> None:
        events.append(event)
        if isinstance(event, ChunkFinished):
            loaded[0].set()

    async def restored(target: str) -> None:
        loaded.append(anyio.Event())
        with anyio.fail_after(60):
            await restore(tmp_path / "b", target, cluster="local:2", on_event=on_event)

    try:
        spread._Workers.client = lambda workers: held_back(real, workers, events, loaded[0])
        with fresh_database(db.postgres, "cluster_target") as target:
            anyio.run(restored, target.dsn, backend="asyncio")
            assert table_digests(target.dsn) == table_digests(db.dsn)
    finally:
        spread._Workers.client = real
    return target, events


def test_units_load_here_while_a_local_cluster_starts_and_its_workers_take_the_rest(
    db: Database, tmp_path: Path
) -> None:
    """While a local cluster starts, the restore's own connection loads units (here the
    cluster is held back until one is loaded); once it is up, the workers take the
    rest. Every table is the source's."""
    from asyncsnap.events import ChunkFinished

    here: list[int] = []

    async def held_back(real: Any, workers: Any, events: list[Any], loaded: Any) -> Any:
        await loaded.wait()
        here.append(sum(isinstance(e, ChunkFinished) for e in events))
        return await real(workers)

    _, events = _restore_with_the_cluster_held_back(db, tmp_path, held_back)
    finished = sum(isinstance(e, ChunkFinished) for e in events)
    # (one unit may finish here after the hand-over: it was under way)
    assert here and here[0] >= 1 and finished >= here[0] + 1 + 20, (here, finished)


def test_rows_all_loaded_before_the_local_cluster_is_up_do_not_wait_for_it(
    db: Database, tmp_path: Path
) -> None:
    """A cluster that is not up when the restore's own connection has loaded every unit is
    not waited for (held back here for good): the restore completes, every table the
    source's."""

    async def never(real: Any, workers: Any, events: list[Any], loaded: Any) -> Any:
        await anyio.sleep_forever()

    _restore_with_the_cluster_held_back(db, tmp_path, never)


def test_a_restore_on_a_cluster_into_existing_tables(db: Database, tmp_path: Path) -> None:
    """The rows of a backup into tables that exist and are empty (a schema-only restore
    first, then --data-only --cluster): parents before children, every table the
    source's; run again, the tables hold rows and it is refused."""
    db.execute(SCHEMA)
    db.execute(
        "CREATE TABLE public.child (id int PRIMARY KEY, wide int REFERENCES public.wide (id));"
        "INSERT INTO public.child SELECT g, g FROM generate_series(1, 500) g"
    )
    run(dump, db.dsn, output=tmp_path, name="b", split_larger_than=256 << 10)
    with fresh_database(db.postgres, "cluster_target") as target:
        schema = run_cli(
            "restore", str(tmp_path / "b"), target.dsn, "--schema-only", env=clean_env()
        )
        assert schema.returncode == 0, schema.stderr
        rows = ("restore", str(tmp_path / "b"), target.dsn, "--data-only", "--cluster", "local:2")
        done = run_cli(*rows, env=clean_env())
        assert done.returncode == 0, done.stderr
        assert table_digests(target.dsn) == table_digests(db.dsn)
        again = run_cli(*rows, env=clean_env())
        assert again.returncode != 0 and "already has rows in public.child" in again.stderr
        assert table_digests(target.dsn) == table_digests(db.dsn)


def test_a_failed_restore_on_a_cluster_leaves_no_unit_loading_after_it(
    db: Database, tmp_path: Path
) -> None:
    """One unit fails (a row its target refuses, at the end of its file) while another
    still streams the big table on a worker the restore did not start (``dask worker``):
    the restore fails saying so, and the big table's unit rolls back instead of
    committing after the restore returned."""
    db.execute(BIG)
    db.execute(
        "CREATE TABLE public.refused (id int, pad text);"
        "INSERT INTO public.refused SELECT g, repeat(md5(g::text), 8) "
        "FROM generate_series(1, 60000) g"
    )
    run(dump, db.dsn, output=tmp_path, name="b", split_larger_than=None)
    password = urlsplit(db.dsn).password or ""
    with fresh_database(db.postgres, "cluster_target") as target:
        schema = run_cli(
            "restore", str(tmp_path / "b"), target.dsn, "--schema-only", env=clean_env()
        )
        assert schema.returncode == 0, schema.stderr
        target.execute("ALTER TABLE public.refused ADD CONSTRAINT last CHECK (id < 60000)")
        with dask_cluster(password) as address:
            done = run_cli(
                "restore", str(tmp_path / "b"), target.dsn, "--data-only", "--cluster", address,
                env=clean_env(),
            )  # fmt: skip
            assert done.returncode != 0, done.stderr
            assert '"last"' in done.stderr, done.stderr
            # The workers live on: a unit still loading would commit now.
            assert anyio.run(_asyncsnap_backends, target.dsn, backend="asyncio") == 0
            time.sleep(1)
            assert target.fetchval("SELECT count(*) FROM public.big") == 0, done.stderr


def test_a_unit_committing_on_a_worker_while_another_fails_is_reported(
    db: Database, tmp_path: Path
) -> None:
    """restore --cluster on `dask worker` processes: public.big's COMMIT is under way (a
    deferred foreign key) when public.gate's unit fails. The restore waits for the
    committing unit's own answer, so what it says was committed is what the target
    holds. (Before, its task was cancelled and its result lost: the failure named
    nothing committed while public.big held every row.)"""
    backup = gated_backup(db, tmp_path)
    password = urlsplit(db.dsn).password or ""
    with fresh_database(db.postgres, "cluster_target") as target, dask_cluster(password) as address:
        code, err, rows_at_return = restore_with_a_commit_under_way(
            target, backup, "--data-only", "--cluster", address
        )
        assert code != 0 and "the gate closed" in err, err
        assert anyio.run(_asyncsnap_backends, target.dsn, backend="asyncio") == 0
        time.sleep(1)
        assert target.fetchval("SELECT count(*) FROM public.big") == rows_at_return
        assert rows_at_return == 200000 and "committed: public.big" in err, err


def test_a_restore_on_a_cluster_creates_the_database_and_cleans_it(
    postgres: Postgres, tmp_path: Path
) -> None:
    """--create and --clean with --cluster: the coordinator makes (or cleans) the
    database the backup names and the workers load into that one, not into the database
    the DSN names; each time every table is the source's. Each table's event carries the
    worker's own figures, as a local restore's does (it said 0 bytes in 0.00 s)."""
    from asyncsnap.api import restore
    from asyncsnap.events import ChunkFinished

    with database_named(postgres, "asyncsnap_spread") as source:
        source.execute(SCHEMA)
        source.execute(
            "CREATE TABLE public.child (id int PRIMARY KEY, wide int REFERENCES public.wide);"
            "INSERT INTO public.child SELECT g, g FROM generate_series(1, 500) g"
        )
        run(dump, source.dsn, output=tmp_path, name="b", split_larger_than=256 << 10)
        expected = table_digests(source.dsn)
        admin_execute(postgres, f'ALTER DATABASE "{source.name}" RENAME TO "{source.name}_src"')

        events: list[Any] = []
        run(restore, tmp_path / "b", postgres.admin_dsn, create=True, cluster="local:2",
            on_event=events.append)  # fmt: skip
        assert table_digests(source.dsn) == expected
        finished = [e for e in events if isinstance(e, ChunkFinished)]
        assert finished and all(e.seconds > 0 and e.bytes > 0 for e in finished), finished
        local: list[Any] = []
        with fresh_database(postgres, "cluster_local") as elsewhere:
            run(restore, tmp_path / "b", elsewhere.dsn, on_event=local.append)
        assert sum(e.bytes for e in finished) == sum(
            e.bytes for e in local if isinstance(e, ChunkFinished)
        )

        source.execute(
            "INSERT INTO public.child VALUES (501, 1); DELETE FROM public.wide WHERE id > 900;"
            "CREATE TABLE public.stray (x int)"
        )
        cleaned = run_cli(
            "restore", str(tmp_path / "b"), source.dsn, "--clean", "--cluster", "local:2",
            env=clean_env(),
        )  # fmt: skip
        assert cleaned.returncode == 0, cleaned.stderr
        assert table_digests(source.dsn) == {
            **expected,
            "public.stray": (0, hashlib.md5().hexdigest()),
        }


def test_a_chunks_progress_reaches_the_coordinator_while_it_is_copied(
    db: Database, tmp_path: Path
) -> None:
    """A worker's progress (rows and bytes so far, every quarter second at most) comes to
    the coordinator's events while the chunk is copied, before it is finished."""
    from asyncsnap.events import ChunkFinished, ChunkProgress

    db.execute(SCHEMA)
    db.execute(
        "INSERT INTO public.wide SELECT g, repeat(md5(g::text), 40), g, now()"
        " FROM generate_series(40001, 300000) g"
    )
    events: list[Any] = []
    run(
        dump,
        db.dsn,
        output=tmp_path,
        name="b",
        split_larger_than=None,
        cluster="local:1",
        on_event=events.append,
    )
    wide = [e for e in events if getattr(e, "label", "") == "public.wide"]
    progress = [e.rows for e in wide if isinstance(e, ChunkProgress)]
    assert progress, [type(e).__name__ for e in wide]
    assert progress == sorted(progress) and progress[0] > 0
    finished = next(e for e in wide if isinstance(e, ChunkFinished))
    assert wide.index(finished) > max(i for i, e in enumerate(wide) if isinstance(e, ChunkProgress))
    assert progress[-1] <= finished.rows == 300_000


def test_a_file_replaced_after_its_task_wrote_it_fails_the_dump(
    s3: S3Server, tmp_path: Path
) -> None:
    """The coordinator's last check: each file is still the one its task wrote (a local
    file's inode, size and time; an object's entity tag), or at least the same bytes (a
    finished task Dask ran again when the worker holding its result died). Replaced by
    other bytes (a task run twice, the loser late): the dump fails naming it."""
    from asyncsnap.cluster import check_stamps, file_stamp
    from asyncsnap.jobs import FileTarget
    from asyncsnap.storage.files import StoredFile
    from asyncsnap.storage.s3 import S3Store, StoreUrl

    (tmp_path / "b" / "data").mkdir(parents=True)
    local = FileTarget(str(tmp_path / "b"))
    (tmp_path / "b" / "data" / "t.ndjson").write_bytes(b'{"a":1}\n')
    entry = StoredFile("data/t.ndjson", 1, 8, 8, "0" * 64, stamp=file_stamp(local, "data/t.ndjson"))
    check_stamps(local, {"t": entry})
    (tmp_path / "same").write_bytes(b'{"a":1}\n')  # the same bytes again: no harm
    os.rename(tmp_path / "same", tmp_path / "b" / "data" / "t.ndjson")
    entry = replace(entry, sha256=hashlib.sha256(b'{"a":1}\n').hexdigest())
    check_stamps(local, {"t": entry})
    (tmp_path / "other").write_bytes(b'{"a":2}\n')
    os.rename(tmp_path / "other", tmp_path / "b" / "data" / "t.ndjson")
    with pytest.raises(DumpFailed, match=r"data/t\.ndjson changed after its task wrote it"):
        check_stamps(local, {"t": entry})

    os.environ.update(s3.env())
    try:
        store = S3Store(StoreUrl.parse(f"s3://{BUCKET}/stamps"))
        remote = FileTarget(f"s3://{BUCKET}/stamps", "b")
        store.put("b/data/t.ndjson.zst", b"first")
        entry = StoredFile("data/t.ndjson.zst", 1, 5, 5, hashlib.sha256(b"first").hexdigest())
        entry = replace(entry, stamp=file_stamp(remote, entry.path))
        store.put("b/data/t.ndjson.zst", b"first")
        check_stamps(remote, {"t": entry})
        store.put("b/data/t.ndjson.zst", b"other")
        with pytest.raises(DumpFailed, match="changed after its task wrote it"):
            check_stamps(remote, {"t": entry})
    finally:
        for key in s3.env():
            os.environ.pop(key, None)
