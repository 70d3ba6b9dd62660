"""One snapshot's chunks on a Dask cluster: ``dump --cluster ADDRESS``.

The coordinator does what a local dump does up to the copy (exports the snapshot, locks,
plans the chunks, claims the backup's name) and after it (SHA256SUMS, then the manifest
last); between, each chunk is a task on a Dask ``distributed`` cluster: a worker imports
the snapshot with the run's session policy, copies its chunk, converts, compresses,
hashes, encrypts when asked, writes its file straight to the backup (an object store's
prefix, or a directory every worker shares), and returns only the file's manifest entry
(``jobs.run_chunk_alone``, the local dump's own code). The coordinator's transaction holds
the snapshot until the last task has ended, so the files are of one moment.

- ``ADDRESS`` is a scheduler (``tcp://host:8786``, ``tls://...``) or ``local:N``: a local
  cluster of N worker processes started for the dump (past the GIL on one machine).
- Secrets never travel in a task: the connection's URI goes without its password (a
  worker takes it from its own environment: ``PGPASSWORD``, ``~/.pgpass``, as libpq); a
  local cluster's workers are started with ``PGPASSWORD`` in their environment. Object
  store credentials are the worker's own (``AWS_*``), as for any store client; an age
  recipient is a public key.
- A worker lost mid-task: the scheduler runs the task again elsewhere (its file is written
  under a temporary name of its own, so a killed run's leftover is never in the way); a
  connection lost mid-copy is retried in the task, as the local dump does. A task that
  fails otherwise fails the dump with one error naming the worker and the cause.
- A local directory as the output is checked first: every worker must see a file the
  coordinator wrote into the backup's directory (a shared file system), else the dump is
  refused before any chunk is copied.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio

from .connection import ConnectParams, split_password
from .copy import CHUNK_ATTEMPTS, CopyContext
from .errors import AsyncsnapError, DumpFailed, UsageError, most_telling
from .events import ChunkFinished, ChunkProgress, ChunkStarted, EventCallback, Notice
from .format import DATA_DIR
from .jobs import ChunkConnectionLost, ChunkJob, FileTarget, WorkItem, run_chunk_alone
from .session import SessionPolicy
from .signals import cancel_on_signal, interrupted
from .snapshot import snapshot_lost
from .storage.backup import LocalSource, StoreSource, check_stored
from .storage.files import BackupDirectory, StoredFile
from .storage.location import backup_location
from .storage.prefix import BackupPrefix
from .storage.s3 import S3Store, StoreUrl

_LOCAL = re.compile(r"local:([0-9]{1,3})")
_SCHEMES = ("tcp://", "tls://", "ws://", "wss://")
_MAX_LOCAL_WORKERS = 256
_RETRY_PAUSE = 0.5


@dataclass(frozen=True)
class ClusterAddress:
    """Where the chunks run: a Dask scheduler's address, or ``local:N``."""

    text: str
    local_workers: int | None = None  # local:N

    @classmethod
    def parse(cls, text: str) -> ClusterAddress:
        """:raises UsageError: for anything else."""
        local = _LOCAL.fullmatch(text)
        if local is not None and 1 <= int(local.group(1)) <= _MAX_LOCAL_WORKERS:
            return cls(text, int(local.group(1)))
        if text.startswith(_SCHEMES) and len(text) > len("tcp://"):
            return cls(text)
        raise UsageError(
            f"--cluster {text!r} is neither a scheduler address nor local:N",
            hint="give a Dask scheduler (tcp://host:8786) or local:N for N worker processes "
            f"here (1 to {_MAX_LOCAL_WORKERS})",
        )


# How long a local cluster may take to start (it takes about a second), its start not
# cancelled meanwhile (``cluster_client``).
LOCAL_START_LIMIT = 60.0


def import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise UsageError(
            "--cluster needs Dask's distributed, which is not installed",
            hint="pip install 'asyncsnap[cluster]'",
        ) from exc
    return distributed


# A local cluster's workers are forked from multiprocessing's fork server, a process of
# its own that imports what a worker runs once (``start_fork_server``): spawned, each
# worker imported distributed, the task's modules and this program's entry point anew
# (0.8 s of CPU a worker, taken from the server and the conversion on a small machine).
# Not forked from this process, although that is faster still (a dump of pgbench 1.5-1.7
# times the local one, against 2.0-2.1 spawned): a worker forked from the coordinator
# holds copies of its sockets and of its signal wake-up pipe, so a SIGTERM sent to a
# worker woke the coordinator's handler and stopped the dump, and once in five SIGKILLs
# of the coordinator two workers lived on, holding its connection, and with it the
# snapshot, open (both seen, 2026-12-06; docs/scaling.md).
_FORK_SERVER_PRELOAD = [
    "__main__",
    "distributed",
    "asyncsnap.cluster_preload",  # the workers' environment (Dask's configuration read)
    "asyncsnap.cluster",
]


# Dask starts a worker with MALLOC_TRIM_THRESHOLD_=65536: glibc then gives back to the
# system what a conversion frees and faults the next block in a page at a time. A local
# cluster's workers allocate as a local dump does, with glibc's defaults (a value in the
# environment kept): `python -m benchmarks --cluster`, alternating, 2.04-2.20 times the
# local dump with Dask's value, 1.81-1.83 without (2026-12-06).
ALLOCATOR_AS_A_LOCAL_DUMPS = {"MALLOC_TRIM_THRESHOLD_"}


def start_local_fork_server(address: ClusterAddress) -> None:
    """For ``local:N``: the fork server started now, before the cluster
    (``BackgroundCluster.serve``), so that its imports overlap the caller's work."""
    if address.local_workers is not None:
        start_fork_server()


def start_fork_server() -> None:
    """Start the fork server, importing ``_FORK_SERVER_PRELOAD``, unless one runs: early,
    so that its imports overlap the coordinator's (this imports nothing of Dask's).

    Its workers inherit its environment, not this process's when they start: the server
    sets what Dask's nanny sets for a spawned worker as it starts (``cluster_preload``).
    The rest of a worker's environment is given to it as it starts
    (``_worker_environment``)."""
    import multiprocessing
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(_FORK_SERVER_PRELOAD)
    forkserver.ensure_running()


# A local cluster's workers (their nannies take Dask's configuration as they are made, and
# give it to the workers they start) run without Dask's statistical profiler: it samples
# the worker's threads every 10 ms on the worker's event loop, for the dashboard's profile
# page, and a local cluster has no dashboard. `dump --cluster local:2` of pgbench,
# alternating (5 pairs, 2026-12-07): 2.91-3.10 s without it, 3.00-3.15 s with it; the
# workers' CPU 1.94-2.02 s against 2.08-2.14 s. A cluster of one's own is left as it is.
_LOCAL_WORKERS_CONFIG = {"distributed.worker.profile.enabled": False}


# A local cluster's worker's environment, as JSON, made its own by ``dask_setup``.
_ENVIRONMENT = "ASYNCSNAP_WORKER_ENVIRONMENT"


def _worker_environment(password: str | None) -> dict[str, str]:
    """What a local cluster's worker is started with: this process's environment now, as a
    spawned worker had it (a store's credentials set since the fork server started
    included, and one unset since left out), with the connection's password.

    One variable, which the worker unpacks (``dask_setup``): Dask sets each variable given
    to it in the new process before it names itself, and with every variable set there
    the name was lost (``ps`` showed the fork server's command line)."""
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password
    return {_ENVIRONMENT: json.dumps(env)}


def dask_setup(worker: Any) -> None:
    """Dask runs this as a worker that preloads this module starts: a local cluster's
    worker takes the coordinator's environment (``_worker_environment``), keeping what
    Dask's own configuration sets for a worker."""
    import dask

    packed = os.environ.pop(_ENVIRONMENT, None)
    if packed is None:  # a worker not started by ``cluster_client``
        return
    logging.getLogger("distributed.worker").addFilter(_closing_heartbeat)
    # (as the fork server's do, ``cluster_preload``: a worker started again is spawned)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wanted: dict[str, str] = json.loads(packed)
    for key in ("distributed.nanny.pre-spawn-environ", "distributed.nanny.environ"):
        for name in dask.config.get(key, {}):
            if name in os.environ:
                wanted.setdefault(name, os.environ[name])
    for name in [name for name in os.environ if name not in wanted]:
        del os.environ[name]
    os.environ.update(wanted)


def _closing_heartbeat(record: logging.LogRecord) -> bool:
    """False for a local cluster's worker's heartbeat meeting its scheduler closed.

    As a local cluster closes, the scheduler drops its workers' connections while a
    worker's heartbeat may be under way, and Dask logs that as an error with a traceback
    (dask/distributed#7105, open): on the terminal after a run that went well. The
    scheduler lives in the coordinator's process, which says itself when it is lost."""
    return record.msg != "Failed to communicate with scheduler during heartbeat."


@contextlib.contextmanager
def _forked_from_server() -> Iterator[None]:
    """Workers started within are forked from the fork server. A worker started again
    later (its process died) is started as Dask's configuration says (spawned)."""
    import dask

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        # Dask names its own preload on its first use of the fork server, not ours: the
        # server started first (``start_fork_server``) keeps ours.
        start_fork_server()
        yield


def without_password(params: ConnectParams) -> tuple[ConnectParams, str | None]:
    """The connection a task carries: its URI without the password (the worker's own
    environment gives it, as libpq's does), and the password taken out, if any."""
    if params.uri is None:
        return replace(params, secrets=()), None
    uri, password = split_password(params.uri)
    return replace(params, uri=uri, secrets=()), password


@dataclass(frozen=True)
class ChunkFailure:
    """What a task returns instead of raising: an exception's pickled form would lose its
    hint and could not say which worker it was."""

    worker: str
    kind: str
    message: str
    hint: str | None
    exit_code: int


def _worker_name() -> str:
    try:
        from distributed import get_worker

        worker = get_worker()
        return str(worker.name if worker.name is not None else worker.address)
    except Exception:
        return f"pid {os.getpid()}"


def copy_chunk(
    job: ChunkJob, params: ConnectParams, policy: SessionPolicy, topic: str | None = None
) -> Any:
    """The task: one chunk copied into its file by this worker, the file's entry returned
    (``StoredFile``), or a ``ChunkFailure``. A connection lost mid-copy is tried again,
    as the local dump does. ``topic``: where its progress goes (``_progress_sender``)."""
    return guarded(_copy_chunk, job, params, policy, topic)


def _progress_sender(topic: str | None, stop_if_cancelled: Callable[[], None]) -> Any:
    """The task's ``emit``: its progress (every ``events.PROGRESS_INTERVAL`` at most, as
    the copy reports it) sent to the coordinator as the worker's events on ``topic``
    (the table's label and counts only); other events stay here. Every event first asks
    whether the task is still wanted (``cancellation_check``): the copy's start, before
    its file is created, and its end, before the file is complete, among them."""
    from distributed import get_worker

    worker = get_worker()

    def emit(event: Any) -> None:
        stop_if_cancelled()
        if topic is not None and isinstance(event, ChunkProgress):
            worker.log_event(topic, (event.label, event.rows, event.bytes))

    return emit


class TaskCancelled(AsyncsnapError):
    """A task stopped itself: the scheduler had cancelled it (its run failed or was
    interrupted). Its result reaches no one."""


def cancellation_check() -> Callable[[], None]:
    """In a task's thread: a function raising ``TaskCancelled`` once the scheduler no
    longer wants this task. Dask cannot stop a running task, so a task asks at each of
    its events (a copy's progress reports, a load's tables) and stops itself: a copy
    discards its file instead of finishing an upload into a backup being removed, a load
    rolls back instead of committing rows after its restore said what was committed."""
    from distributed import get_worker

    worker = get_worker()
    key = worker.get_current_task()  # this task's: it runs in the task's own thread

    def check() -> None:
        task = worker.state.tasks.get(key)
        stopped = _STOPPED_RUNS  # replaced whole by ``_stop_run``, never changed in place
        if (
            task is None
            or task.state == "cancelled"
            or any(str(key).startswith(run) for run in stopped)
        ):
            raise TaskCancelled("the run this task belonged to stopped")

    return check


# On a worker: the key prefixes of runs that failed (``run_tasks``), whose tasks stop at
# their next check but still return, so that the run learns what each one did.
_STOPPED_RUNS: frozenset[str] = frozenset()


def _stop_run(prefix: str) -> None:
    """On a worker (``Client.run``): the run whose keys start with ``prefix`` stopped."""
    global _STOPPED_RUNS
    _STOPPED_RUNS = _STOPPED_RUNS | {prefix}


def _copy_chunk(
    job: ChunkJob, params: ConnectParams, policy: SessionPolicy, topic: str | None
) -> StoredFile:
    import asyncio

    stop_if_cancelled = cancellation_check()
    emit = _progress_sender(topic, stop_if_cancelled)
    assert isinstance(job.target, FileTarget)
    for attempt in range(CHUNK_ATTEMPTS):
        stop_if_cancelled()  # an attempt after a lost connection, too
        try:
            stored = asyncio.run(run_chunk_alone(job, params, policy, emit))
            return replace(stored, stamp=file_stamp(job.target, stored.path))
        except ChunkConnectionLost:
            if attempt + 1 == CHUNK_ATTEMPTS:
                raise
            time.sleep(_RETRY_PAUSE)
    raise AssertionError("unreachable")  # pragma: no cover


def file_stamp(target: FileTarget, path: str) -> str | None:
    """What the store says of a backup's file now: an object's entity tag, or a local
    file's inode, size and modification time (a file renamed over it has another inode).
    Taken by the task just after it wrote the file, and again by the coordinator before
    the manifest (``check_stamps``)."""
    where = backup_location(target.root, role="target")
    if isinstance(where, StoreUrl):
        return S3Store(where).etag(f"{target.name}/{path}" if target.name else path)
    try:
        st = os.stat(os.path.join(where, path))
    except FileNotFoundError:
        return None
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def check_stamps(target: FileTarget, stored: dict[str, StoredFile]) -> None:
    """Every file is still the one its task wrote (its stamp unchanged): a run of the
    same task that the scheduler had given up on (a worker cut off, not dead) may have
    written its file again after it.

    :raises DumpFailed: naming the file replaced."""
    where = backup_location(target.root, role="target")
    if isinstance(where, StoreUrl):
        prefix = f"{target.name}/" if target.name else ""
        tags = {
            o.key.removeprefix(prefix): o.etag
            for o in S3Store(where).objects(f"{prefix}{DATA_DIR}" if prefix else DATA_DIR)
        }
        now = {f.path: tags.get(f.path) for f in stored.values()}
    else:
        now = {f.path: file_stamp(target, f.path) for f in stored.values()}
    source = (
        StoreSource(S3Store(where), target.name)
        if isinstance(where, StoreUrl)
        else LocalSource(Path(where))
    )
    for entry in stored.values():
        if now[entry.path] == entry.stamp:
            continue
        # Written again (Dask runs a finished task again when the worker holding its
        # result dies before the result was released): the same bytes are no harm.
        wrong = check_stored(source, entry.path, entry.stored_bytes, entry.sha256)
        if wrong is not None:
            raise DumpFailed(
                f"{entry.path} changed after its task wrote it ({wrong}): another run of "
                "the same task wrote it again",
                hint="run the dump again (a worker died or was cut off from the scheduler "
                "while its task's file was being written again)",
            )


def guarded(fn: Any, *args: Any) -> Any:
    """On a worker: ``fn(*args)``, or a ``ChunkFailure`` naming this worker and the cause
    (asyncsnap's error as it was, with its hint and exit code)."""
    try:
        return fn(*args)
    except AsyncsnapError as exc:
        return ChunkFailure(
            _worker_name(), type(exc).__name__, exc.message, exc.hint, exc.exit_code
        )
    except Exception as exc:
        return ChunkFailure(
            _worker_name(), type(exc).__name__, str(exc), None, DumpFailed.exit_code
        )


# How long a scheduler may have no worker before a run gives up on it: workers started
# with the scheduler (a job script, a test) join a second or two after it listens.
WORKERS_TIMEOUT = 60.0


def _no_workers(address: ClusterAddress) -> DumpFailed:
    return DumpFailed(
        f"no worker joined the Dask scheduler at {address.text} within {WORKERS_TIMEOUT:.0f} s",
        hint="start workers with `dask worker ADDRESS` (they need asyncsnap installed)",
    )


def map_on_cluster(
    address: ClusterAddress, fn: Any, arguments: Sequence[tuple[Any, ...]], labels: Sequence[str]
) -> list[Any]:
    """``fn(*args)`` for each of ``arguments`` as a task (``fn`` a module-level function,
    sent by reference; ``arguments`` hold no secret), the results in order: for code that
    is not async (``verify --cluster``), on an event loop of its own.

    Called from the main thread, SIGINT and SIGTERM stop it as they stop a dump: the
    tasks cancelled and the cluster closed (a local one's workers stopped) before it
    raises ``Interrupted``, with no traceback of the engine's and no process left.

    :raises DumpFailed: a task failed (naming its worker, its ``labels`` entry and the
        cause, with the cause's exit code), or the workers running one kept dying."""
    received: list[int] = []
    # (the loop's signal handling leaves the default actions behind: the caller's are put back)
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        results = anyio.run(
            _map_on_cluster, address, fn, arguments, labels, received, backend="asyncio"
        )
    except BaseExceptionGroup as group:
        raise most_telling(group) from None
    finally:
        if threading.current_thread() is threading.main_thread():
            for number, handler in before.items():
                if handler is not None:
                    signal.signal(number, handler)
    if results is None:
        raise interrupted(
            received[0] if received else signal.SIGINT, "the backup was not checked to the end"
        )
    return results


async def _map_on_cluster(
    address: ClusterAddress,
    fn: Any,
    arguments: Sequence[tuple[Any, ...]],
    labels: Sequence[str],
    received: list[int],
) -> list[Any] | None:
    """The results, or None when a signal (noted in ``received``) stopped the run."""
    results = None
    async with anyio.create_task_group() as tg:
        if threading.current_thread() is threading.main_thread():
            tg.start_soon(cancel_on_signal, tg.cancel_scope, received)
        async with cluster_client(address, None) as client:
            futures = [client.submit(guarded, fn, *args, pure=False) for args in arguments]
            found: dict[str, Any] = {}
            try:
                await _run_tasks(
                    client,
                    futures,
                    {f.key: label for f, label in zip(futures, labels, strict=True)},
                    found.__setitem__,
                    "checking",
                )
            finally:
                if len(found) < len(futures):  # a remote scheduler forgets the rest
                    with anyio.CancelScope(shield=True):
                        await client.cancel(futures)
            results = [found[f.key] for f in futures]
        tg.cancel_scope.cancel()
    return results


def _sees(path: str, content: str) -> bool:
    """On a worker: whether the coordinator's check file is there with its content."""
    try:
        return Path(path).read_text() == content
    except OSError:
        return False


class TaskFailed(DumpFailed):
    def __init__(self, failure: ChunkFailure, label: str, doing: str = "copying") -> None:
        super().__init__(
            f"worker {failure.worker} failed {doing} {label}: {failure.message}",
            hint=failure.hint or "the worker's log says more",
        )
        self.exit_code = failure.exit_code


@contextlib.asynccontextmanager
async def cluster_client(address: ClusterAddress, password: str | None) -> AsyncIterator[Any]:
    """A client of the cluster (a local one started, and stopped after)."""
    distributed = import_distributed()
    if address.local_workers is None:
        try:
            client = await distributed.Client(address.text, asynchronous=True, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise DumpFailed(
                f"cannot reach the Dask scheduler at {address.text}: {exc}",
                hint="check the address and that `dask scheduler` runs there",
            ) from exc
        try:
            try:
                await client.wait_for_workers(1, timeout=WORKERS_TIMEOUT)
            except TimeoutError:
                raise _no_workers(address) from None
            yield client
        finally:
            with anyio.CancelScope(shield=True):
                await client.close()
        return
    import dask

    # Started to its end even when the run is cancelled meanwhile (a failure, a signal),
    # then closed: a local cluster stopped while its workers start printed tracebacks of
    # multiprocessing's and Dask's (a semaphore gone as a worker unpickled its process,
    # "Nanny failed to start"). It takes about a second; LOCAL_START_LIMIT bounds it.
    with anyio.CancelScope(shield=True) as starting:
        starting.deadline = anyio.current_time() + LOCAL_START_LIMIT
        with _forked_from_server(), dask.config.set(_LOCAL_WORKERS_CONFIG):
            env = _worker_environment(password)
            cluster = await distributed.LocalCluster(
                n_workers=address.local_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                # no dashboard, and the scheduler's HTTP endpoints (health, metrics) on a
                # free port of this host only: two dumps at once must not contend for :8787
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                asynchronous=True,
                env=env,
                silence_logs=40,  # logging.ERROR: a worker's restart is ours to tell
                preload=["asyncsnap.cluster"],  # imported as a worker starts, not by a task
            )
        try:
            client = await distributed.Client(cluster, asynchronous=True)
        except BaseException:
            await cluster.close()
            raise
    if starting.cancelled_caught:
        raise DumpFailed(
            f"the local cluster did not start within {LOCAL_START_LIMIT:.0f} s",
            hint="the machine may be short of memory or processes; try fewer workers",
        )
    try:
        try:
            yield client
        finally:
            with anyio.CancelScope(shield=True):
                await client.close()
    finally:
        with anyio.CancelScope(shield=True):
            await cluster.close()


async def check_shared(client: Any, target: BackupDirectory) -> None:
    """Every worker sees the backup's directory: a file the coordinator wrote there.

    :raises UsageError: naming a worker that does not."""
    content = secrets.token_hex(16)
    probe = Path(target.path) / f".cluster-check-{content[:8]}"
    await anyio.to_thread.run_sync(probe.write_text, content)
    try:
        seen = await client.run(_sees, str(probe), content)
    finally:
        probe.unlink(missing_ok=True)
    blind = sorted(worker for worker, ok in seen.items() if not ok)
    if not seen or blind:
        raise UsageError(
            f"worker {blind[0] if blind else '(none)'} cannot see {target.path}: with "
            "--cluster, workers write the files themselves",
            hint="give -o a directory every worker mounts at the same path, or an object "
            "store (s3://bucket/prefix)",
        )


class BackgroundCluster:
    """A cluster's client opened in the background (``serve``) while the dump connects,
    exports its snapshot and plans: a local cluster's worker processes start meanwhile
    (and import what a task runs: ``preload``), instead of after the plan."""

    def __init__(self, address: ClusterAddress, password: str | None) -> None:
        self.address = address
        self.password = password
        self.client: Any = None
        self._ready = anyio.Event()
        self._closing = anyio.Event()

    async def serve(self) -> None:
        try:
            # The fork server first, its imports on another core; then the engine's
            # here, 0.45 s of CPU, in a thread while the event loop connects and plans
            # (on the loop, it held the caller's first queries back).
            start_local_fork_server(self.address)
            await anyio.to_thread.run_sync(import_distributed)
            async with cluster_client(self.address, self.password) as client:
                self.client = client
                self._ready.set()
                # Open until ``close``, even when the dump is cancelled (a signal): its
                # clean-up still asks the workers whether its tasks stopped.
                with anyio.CancelScope(shield=True):
                    await self._closing.wait()
        finally:
            self._ready.set()

    async def ready(self) -> Any:
        """The client, once the cluster is up."""
        await self._ready.wait()
        if self.client is None:  # pragma: no cover - serve's failure cancels the dump first
            raise DumpFailed(f"the cluster at {self.address.text} did not start")
        return self.client

    def close(self) -> None:
        self._closing.set()


@contextlib.asynccontextmanager
async def background_cluster(
    address: ClusterAddress, params: ConnectParams
) -> AsyncIterator[BackgroundCluster]:
    """A ``BackgroundCluster`` for the body's duration; a cluster that cannot start fails
    the body (which is cancelled) with its error."""
    from .errors import most_telling

    cluster = BackgroundCluster(address, without_password(params)[1])
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cluster.serve)
            try:
                yield cluster
            finally:
                cluster.close()
    except BaseExceptionGroup as group:
        raise most_telling(group) from None


async def copy_on_cluster(
    cluster: BackgroundCluster,
    items: Sequence[WorkItem],
    ctx: CopyContext,
    params: ConnectParams,
    policy: SessionPolicy,
    coordinator_lost: anyio.Event,
) -> dict[str, StoredFile]:
    """Every item as a task on the cluster; returns the stored files by stem."""
    backup = ctx.backup
    assert isinstance(backup, BackupDirectory | BackupPrefix)
    target = replace(FileTarget.of(backup), unique_temporaries=True)
    task_params, _ = without_password(params)
    stored: dict[str, StoredFile] = {}
    client = await cluster.ready()
    if isinstance(backup, BackupDirectory):
        await check_shared(client, backup)
    run_id = secrets.token_hex(6)
    prefix = f"asyncsnap-{run_id}-"  # every task's key: its stem after it
    topic = f"asyncsnap-progress-{run_id}"

    def progress(event: tuple[float, Any]) -> None:
        label, rows, size = event[1]
        ctx.emit(ChunkProgress(label=str(label), rows=int(rows), bytes=int(size)))

    client.subscribe_topic(topic, progress)
    labels = {}
    futures = []
    for item in items:
        job = replace(ctx.job(item), target=target)
        key = prefix + item.stem
        labels[key] = item
        ctx.emit(ChunkStarted(label=item.label, est_rows=item.est_rows))
        futures.append(
            client.submit(copy_chunk, job, task_params, policy, topic, key=key, pure=False)
        )

    def finished(key: str, found: StoredFile) -> None:
        item = labels[key]
        stored[item.stem] = found
        ctx.emit(
            ChunkFinished(
                label=item.label,
                rows=found.rows,
                bytes=found.bytes,
                stored_bytes=found.stored_bytes,
                seconds=found.seconds,
            )
        )

    try:
        async with anyio.create_task_group() as tg:

            async def watch_coordinator() -> None:
                await coordinator_lost.wait()
                raise snapshot_lost()

            tg.start_soon(watch_coordinator)
            await run_tasks(
                client,
                futures,
                {k: i.label for k, i in labels.items()},
                finished,
                prefix=prefix,
                emit=ctx.emit,
            )
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        from .errors import most_telling

        raise most_telling(group) from None
    finally:
        client.unsubscribe_topic(topic)
    if isinstance(backup, BackupDirectory):
        # A killed run's temporary file (its task ran again under another name).
        await anyio.to_thread.run_sync(_remove_leftovers, Path(backup.path) / DATA_DIR)
    await anyio.to_thread.run_sync(check_stamps, target, stored)
    return stored


async def run_tasks(
    client: Any,
    futures: Sequence[Any],
    labels: Mapping[str, str],
    on_result: Callable[[str, Any], None],
    doing: str = "copying",
    prefix: str | None = None,
    emit: EventCallback | None = None,
    settle: bool = False,
) -> None:
    """Wait for the tasks (``futures`` of ``guarded`` tasks, ``labels`` by key), handing
    each result to ``on_result`` as it comes, released at once: Dask would otherwise run a
    finished task again when the worker holding its result dies. Every task left is
    cancelled when this ends, however it ends.

    After a failure, with ``prefix`` (the start of every key): with ``settle``, the
    workers are first told the run stopped and the tasks running then are awaited (at
    most ``SETTLE_LIMIT`` seconds): each stops at its next check (``cancellation_check``)
    and returns, or returns what it finished meanwhile (a COMMIT already on its way),
    which goes to ``on_result`` too, so that what the caller then reports is what was
    done. Then the rest is cancelled and waited for (``wait_until_stopped``); tasks still
    running after that are said to ``emit``.

    :raises TaskFailed: a task failed (naming its worker, its label and the cause).
    :raises DumpFailed: the workers running a task kept dying."""
    handled: set[str] = set()

    def took(key: str, found: Any) -> None:
        handled.add(key)
        on_result(key, found)

    try:
        await _run_tasks(client, futures, labels, took, doing)
    except BaseException:
        still: int | None = 0
        with anyio.CancelScope(shield=True):
            if settle and prefix is not None:
                out = [f for f in futures if f.key not in handled]
                await _settle(client, prefix, out, took)
            await client.cancel(list(futures), force=True)
            if prefix is not None:
                still = await wait_until_stopped(client, prefix)
        if still != 0 and emit is not None:
            emit(
                Notice(
                    f"{still} task(s) still ran on the cluster when this stopped"
                    if still
                    else "the cluster could not say whether this run's tasks stopped"
                )
            )
        raise
    with anyio.CancelScope(shield=True):
        await client.cancel(list(futures), force=True)


SETTLE_LIMIT = 10.0


async def _settle(
    client: Any, prefix: str, out: Sequence[Any], on_result: Callable[[str, Any], None]
) -> None:
    """After a failure: tell the workers the run stopped (a task starting from now on
    stops at once), cancel the tasks not yet running, and take what the running ones
    return (for at most ``SETTLE_LIMIT`` seconds), failures and stops ignored."""
    distributed = import_distributed()
    try:
        await client.run(_stop_run, prefix, on_error="return")
        running = set(await client.run_on_scheduler(_processing, prefix))
    except Exception:  # the scheduler gone: nothing to settle
        return
    await client.cancel([f for f in out if f.key not in running], force=True)
    with anyio.move_on_after(SETTLE_LIMIT):
        async for future in distributed.as_completed([f for f in out if f.key in running]):
            try:
                found = await future
            except Exception:
                continue
            if not isinstance(found, ChunkFailure):
                on_result(future.key, found)


async def _run_tasks(
    client: Any,
    futures: Sequence[Any],
    labels: Mapping[str, str],
    on_result: Callable[[str, Any], None],
    doing: str,
) -> None:
    distributed = import_distributed()
    async for future in distributed.as_completed(futures):
        label = labels[future.key]
        try:
            found = await future
        except distributed.KilledWorker as exc:
            raise DumpFailed(
                f"the cluster gave up on {label}: the workers running it died ({exc})",
                hint="the workers' logs say why (memory?)",
            ) from None
        future.release()
        if isinstance(found, ChunkFailure):
            raise TaskFailed(found, label, doing=doing)
        on_result(future.key, found)


async def wait_until_stopped(client: Any, prefix: str, limit: float = 10.0) -> int | None:
    """Wait (at most ``limit`` seconds) until the scheduler holds no task whose key starts
    with ``prefix`` still to run (a cancel reaches it after ``Client.cancel`` returns) and
    no worker runs one. Returns 0 then; else how many workers' tasks still ran when the
    limit passed, or ``None`` when the cluster could not say (a worker did not answer)."""
    still: int | None = None
    with anyio.move_on_after(limit):
        while True:
            try:
                pending = await client.run_on_scheduler(_to_run, prefix)
                counts = await client.run(_running, prefix, on_error="return")
            except Exception:  # the scheduler gone: nothing left to ask
                return None
            answers = [n for n in counts.values() if isinstance(n, int)]
            still = sum(answers) if len(answers) == len(counts) else None
            if still == 0 and pending == 0:
                return 0
            await anyio.sleep(0.25)
    return still


def _keys(tasks: Mapping[Any, Any], prefix: str, states: Collection[str]) -> list[str]:
    """The keys in ``tasks`` (a scheduler's or a worker's) starting with ``prefix`` whose
    task is in one of ``states``."""
    return [
        str(key)
        for key, task in tasks.items()
        if str(key).startswith(prefix) and task.state in states
    ]


def _processing(prefix: str, dask_scheduler: Any) -> list[str]:
    """On the scheduler: the keys starting with ``prefix`` that a worker runs now."""
    return _keys(dask_scheduler.tasks, prefix, ("processing",))


def _to_run(prefix: str, dask_scheduler: Any) -> int:
    """On the scheduler (``Client.run_on_scheduler``): how many tasks whose keys start with
    ``prefix`` it may still send to a worker or is running."""
    states = ("released", "waiting", "queued", "no-worker", "processing")
    return len(_keys(dask_scheduler.tasks, prefix, states))


def _running(prefix: str, dask_worker: Any) -> int:
    """On a worker (``Client.run``, in its event loop): how many of its running tasks'
    keys start with ``prefix`` (a cancelled task runs on until it returns)."""
    return len(_keys(dask_worker.state.tasks, prefix, ("executing", "long-running", "cancelled")))


def _remove_leftovers(data: Path) -> None:
    for path in data.glob(".*.tmp"):
        path.unlink(missing_ok=True)
