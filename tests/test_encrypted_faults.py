"""Encrypted backups under faults give what plain ones give: an interrupted restore exits
143/130, a damaged file exits 5, an unreadable store exits 4, at any -j, from the local
disk and from a store; whether to decrypt is the manifest's to say."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pyrage import x25519

from asyncsnap.storage.backup import DataFileReader, LocalSource, open_backup
from asyncsnap.storage.encryption import load_identities
from throwaway.s3 import BUCKET, S3Server, s3_server

from .conftest import Database, Postgres, clean_env, fresh_database, run_cli
from .helpers import flip_bit_mid_file, manifest_of

TABLES = """
CREATE TABLE big (id int PRIMARY KEY, pad text);
INSERT INTO big SELECT g, md5(random()::text) || md5(random()::text) || repeat(md5(g::text), 6)
FROM generate_series(1, 200000) g;
""" + "".join(
    f"CREATE TABLE t{n} (id int, pad text);"
    f"INSERT INTO t{n} SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 30000) g;"
    for n in range(6)
)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, str]:
    identity = x25519.Identity.generate()
    path = tmp_path / "key.txt"
    path.write_text(f"{identity}\n")
    return path, str(identity.to_public())


def _dump(db: Database, where: str, *extra: str, env: dict[str, str] | None = None) -> str:
    db.execute(TABLES)
    run = run_cli("dump", db.dsn, "-o", where, "--name", "b", *extra, env=env)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def _loading(target: Database) -> bool:
    return bool(
        target.fetchval(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity "
            "WHERE datname = current_database() AND state = 'active' AND query LIKE 'COPY %'"
        )
    )


def _restore(
    backup: str, target: Database, *extra: str, env: dict[str, str]
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "asyncsnap", "restore", backup, target.dsn, *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _interrupt_while_loading(
    backup: str, postgres: Postgres, signum: int, *extra: str, env: dict[str, str]
) -> tuple[int, str]:
    with fresh_database(postgres, "asyncsnap_interrupted") as target:
        proc = _restore(backup, target, *extra, env=env)
        try:
            deadline = time.monotonic() + 60
            while not _loading(target):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the restore never started loading"
                time.sleep(0.02)
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def _check_interrupted(code: int, err: str, signum: int) -> None:
    expected = 128 + signum
    assert code == expected, err
    assert f"interrupted by {signal.Signals(signum).name}" in err, err
    for crash in ("Traceback", "internal error", "Fatal Python error", "generator already"):
        assert crash not in err, err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("encrypted", "signum"),
    [(False, signal.SIGTERM), (True, signal.SIGINT), (True, signal.SIGTERM)],
    ids=["plain-TERM", "encrypted-INT", "encrypted-TERM"],
)
def test_an_interrupted_restore_exits_with_the_signal_code(
    db: Database,
    postgres: Postgres,
    tmp_path: Path,
    key: tuple[Path, str],
    encrypted: bool,
    signum: int,
) -> None:
    """The restore of an encrypted backup, interrupted while it loads, crashed: "internal
    error: ValueError: generator already executing" (exit 70), or an abort (exit 134) when
    a decryption thread was still inside pyrage at exit (the causes are pinned, run by
    run, by the two tests at the end of this file). Here, as a user sees it: 143 or 130,
    the signal named, nothing else."""
    extra = ["--encrypt-to", key[1]] if encrypted else []
    backup = _dump(db, str(tmp_path), *extra)
    identity = ["-i", str(key[0])] if encrypted else []
    for _ in range(2):
        code, err = _interrupt_while_loading(backup, postgres, signum, *identity, env=clean_env())
        _check_interrupted(code, err, signum)


@pytest.mark.slow
def test_an_interrupted_restore_from_a_store_exits_with_the_signal_code(
    s3: S3Server, db: Database, postgres: Postgres, key: tuple[Path, str]
) -> None:
    """From the store, the crash came in 5 of 5 runs (exit 134)."""
    env = clean_env(**s3.env())
    url = _dump(db, f"s3://{BUCKET}/interrupted", "--encrypt-to", key[1], env=env)
    for _ in range(3):
        code, err = _interrupt_while_loading(
            url, postgres, signal.SIGTERM, "-i", str(key[0]), env=env
        )
        _check_interrupted(code, err, signal.SIGTERM)


def _damaged_restores(
    backup: str, postgres: Postgres, runs: int, *extra: str, env: dict[str, str]
) -> None:
    for _ in range(runs):
        with fresh_database(postgres, "asyncsnap_damaged") as target:
            run = run_cli("restore", backup, target.dsn, "-j", "4", *extra, env=env)
        assert run.returncode == 5, run.stderr
        errors = [line for line in run.stderr.splitlines() if line.startswith(("error:", "hint:"))]
        assert len(errors) == 2, run.stderr
        assert errors[0].startswith("error: data/public.big"), run.stderr
        for crash in ("Traceback", "internal error", "Fatal Python error", "Aborted"):
            assert crash not in run.stderr, run.stderr


@pytest.mark.slow
def test_a_damaged_encrypted_file_fails_every_run_the_same_way(
    db: Database, postgres: Postgres, tmp_path: Path, key: tuple[Path, str]
) -> None:
    """One damaged data file in an encrypted backup, restored with -j 4: the error, then
    "Fatal Python error: Aborted" (exit 134) in 5 of 8 runs. Eight runs: each exits 5 with
    one error line naming the file and one hint line."""
    backup = _dump(db, str(tmp_path), "--encrypt-to", key[1])
    big = next(t for t in manifest_of(backup)["tables"] if t["name"] == "big")
    flip_bit_mid_file(Path(backup) / big["files"][0]["path"])
    _damaged_restores(backup, postgres, 8, "-i", str(key[0]), env=clean_env())


@pytest.mark.slow
def test_a_damaged_encrypted_file_in_a_store_fails_every_run_the_same_way(
    s3: S3Server, db: Database, postgres: Postgres, key: tuple[Path, str]
) -> None:
    """From the store the abort came in 7 of 12 runs."""
    from asyncsnap.storage.s3 import S3Store, StoreUrl

    env = clean_env(**s3.env())
    url = _dump(db, f"s3://{BUCKET}/damaged", "--encrypt-to", key[1], env=env)
    store = S3Store(StoreUrl.parse(url), environ=s3.env())
    import json

    body = json.loads(b"".join(store.read("manifest.json")))
    path = next(t for t in body["tables"] if t["name"] == "big")["files"][0]["path"]
    stored = bytearray(b"".join(store.read(path)))
    stored[len(stored) // 2] ^= 1
    store.put(path, bytes(stored))
    _damaged_restores(url, postgres, 6, "-i", str(key[0]), env=env)


def test_an_identity_given_for_a_plain_backup_is_not_used(
    db: Database, postgres: Postgres, tmp_path: Path, key: tuple[Path, str]
) -> None:
    """Whether to decrypt was decided by --identity: an intact plain backup "did not
    decrypt: Header is invalid" (exit 5) and left empty tables. The manifest decides: a
    key given for a plain backup is not used (a cron job may pass one key to every
    restore), for restore, verify and diff alike."""
    backup = _dump(db, str(tmp_path))
    with fresh_database(postgres, "asyncsnap_plain_key") as target:
        run = run_cli("restore", backup, target.dsn, "-i", str(key[0]), "-q")
        assert run.returncode == 0, run.stderr
        assert target.fetchval("SELECT count(*) FROM public.big") == 200000
        assert target.fetchval("SELECT count(*) FROM public.t5") == 30000
    run = run_cli("verify", backup, "-i", str(key[0]))
    assert run.returncode == 0, run.stderr
    run = run_cli("diff", backup, backup, "-i", str(key[0]), "--exit-code")
    assert run.returncode == 0, run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_store_outage_during_a_restore_exits_4(
    db: Database, postgres: Postgres, key: tuple[Path, str], encrypted: bool
) -> None:
    """The store goes away while a restore reads it: an encrypted backup said "does not
    decrypt" (exit 5, the backup called damaged, an identity hint); a plain one exits 4
    with the store's error. Both now exit 4, with the same error and hint."""
    with s3_server() as server:
        env = clean_env(**server.env(), ASYNCSNAP_STORE_RETRY_SECONDS="2")
        extra = ["--encrypt-to", key[1]] if encrypted else []
        url = _dump(db, f"s3://{BUCKET}/outage", *extra, env=env)
        identity = ["-i", str(key[0])] if encrypted else []
        with fresh_database(postgres, "asyncsnap_outage") as target:
            proc = _restore(url, target, *identity, env=env)
            try:
                deadline = time.monotonic() + 60
                while not _loading(target):
                    assert proc.poll() is None, proc.communicate()
                    assert time.monotonic() < deadline, "the restore never started loading"
                    time.sleep(0.02)
                server.stop()
                _, err = proc.communicate(timeout=180)
            finally:
                proc.kill()
                proc.wait()
    assert proc.returncode == 4, err
    errors = [line for line in err.splitlines() if line.startswith(("error:", "hint:"))]
    assert len(errors) == 2, err
    assert errors[0].startswith("error: could not read s3://"), err
    assert "decrypt" not in err and "damaged" not in err, err


class _SlowFile(io.RawIOBase):
    """A stored file that gives 16 KiB a read, 20 ms apart (a store on a slow link), and
    none while ``GATE`` is closed."""

    GATE = threading.Event()

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        time.sleep(0.02)
        assert self.GATE.wait(timeout=30)
        return self._file.readinto(memoryview(buffer)[: 16 << 10])

    def close(self) -> None:
        self._file.close()
        super().close()


class _SlowSource(LocalSource):
    def open(self, relpath: str) -> io.BufferedIOBase:
        return io.BufferedReader(_SlowFile(self.root / relpath))


def _slow_encrypted_reader(db: Database, tmp_path: Path, key: tuple[Path, str]) -> DataFileReader:
    backup = open_backup(_dump(db, str(tmp_path), "--encrypt-to", key[1]))
    backup = replace(
        backup, source=_SlowSource(Path(backup.path)), identities=tuple(load_identities(key[0]))
    )
    big = next(t for t in backup.tables if t.name == "big")
    return DataFileReader(backup, big.files[0], block_size=4 << 20)


def _decryption_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "asyncsnap-age-read"]


def test_a_reader_closed_while_another_thread_reads_it(
    db: Database, tmp_path: Path, key: tuple[Path, str]
) -> None:
    """restore reads the next block in a worker thread; a cancelled restore closed the
    reader from the event loop's thread meanwhile, and closing the decryption under the
    read raised "generator already executing" (exit 70). Now close waits for the read in
    progress, and no decryption thread is left."""
    reader = _slow_encrypted_reader(db, tmp_path, key)
    blocks = iter(reader)
    _SlowFile.GATE.set()
    next(blocks)
    _SlowFile.GATE.clear()  # the next block waits for the stored bytes
    outcome: list[object] = []
    closed: list[BaseException | None] = []

    def read_next() -> None:
        try:
            outcome.append(len(next(blocks)))
        except BaseException as exc:  # reported below
            outcome.append(exc)

    def close() -> None:
        try:
            reader.close()
            closed.append(None)
        except BaseException as exc:  # reported below
            closed.append(exc)

    worker = threading.Thread(target=read_next)
    worker.start()
    time.sleep(0.3)
    assert worker.is_alive() and not outcome  # inside the read, waiting for bytes
    closer = threading.Thread(target=close)
    closer.start()
    time.sleep(0.3)
    _SlowFile.GATE.set()
    worker.join()
    closer.join()
    assert closed == [None]
    assert len(outcome) == 1 and isinstance(outcome[0], int), outcome
    assert _decryption_threads() == []
    assert next(blocks, None) is None  # closed: nothing more


def test_no_decryption_thread_is_left_running_at_exit(
    tmp_path: Path, db: Database, key: tuple[Path, str]
) -> None:
    """A process that ends while a decryption thread is inside pyrage (reading the stored
    file) aborted: "Fatal Python error: Aborted", exit 134, after the right error line.
    Three processes that stop reading mid-file and exit: each exits 0, quietly (the old
    code aborted in each)."""
    backup = _dump(db, str(tmp_path), "--encrypt-to", key[1])
    script = f"""
import io, time
from dataclasses import replace
from pathlib import Path
from asyncsnap.storage.backup import DataFileReader, open_backup
from asyncsnap.storage.encryption import load_identities
from tests.test_encrypted_faults import _SlowFile, _SlowSource
_SlowFile.GATE.set()
backup = open_backup({backup!r})
backup = replace(backup, source=_SlowSource(backup.source.root),
                 identities=tuple(load_identities({str(key[0])!r})))
big = next(t for t in backup.tables if t.name == "big")
reader = iter(DataFileReader(backup, big.files[0], block_size=1 << 16))
next(reader)
print("read one block", flush=True)
"""
    for _ in range(3):
        run = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
            env=clean_env(),
            timeout=60,
        )
        assert (run.returncode, run.stdout, run.stderr) == (0, "read one block\n", "")
