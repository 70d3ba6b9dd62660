"""prune racing dumps in an object store: a running dump is never taken for a dead one,
and a dump whose objects were removed anyway never completes.

Renewals every 0.2 or 0.5 s here (``ASYNCSNAP_CLAIM_RENEW_SECONDS``), so prune's floor
is 2 or 5 s, and dumps run past it; by default the renewal is every minute and the floor
ten minutes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

import orjson
import pytest

from asyncsnap.storage.prefix import CLAIM_NAME, claim_body, prune_prefix
from asyncsnap.storage.s3 import S3Store, StoreUrl
from throwaway.s3 import BUCKET, S3Server, s3_server, slow_link

from .conftest import CliRun, Database, clean_env, run_cli
from .test_store_backups import keys

RENEW = "0.5"  # seconds: the floor is ten renewals, 5 s
_DUMP = ["--name", "n", "--verify"]
_PRUNE = ["--keep", "1", "--abandoned-after"]
LOST = (
    "while it was written: removed by someone else (a prune that took it for a dump that "
    "died, a lifecycle rule)"
)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


def _env(server: S3Server) -> dict[str, str]:
    return clean_env(
        **server.env(), ASYNCSNAP_STORE_RETRY_SECONDS="3", ASYNCSNAP_CLAIM_RENEW_SECONDS=RENEW
    )


def _start(db: Database, prefix: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asyncsnap",
            "dump",
            db.dsn,
            "-o",
            f"s3://{BUCKET}/{prefix}",
            *_DUMP,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(server: S3Server, prefix: str, dump: subprocess.Popen[str], key: str) -> None:
    deadline = time.monotonic() + 60
    while not any(k.startswith(key) for k in keys(server, prefix)):
        assert dump.poll() is None, dump.communicate()
        assert time.monotonic() < deadline, f"the dump never wrote {key}"
        time.sleep(0.02)


def _prune(server: S3Server, prefix: str, after: str) -> CliRun:
    return run_cli("prune", f"s3://{BUCKET}/{prefix}", *_PRUNE, after, env=_env(server))


def _tables(db: Database) -> None:
    db.execute(
        "CREATE TABLE small (id int); INSERT INTO small SELECT generate_series(1, 100);"
        "CREATE TABLE big (id int, pad text);"
        "INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 300000) g"
    )


def test_abandoned_after_below_the_floor_is_refused(s3: S3Server) -> None:
    """--abandoned-after 0 removed a dump still uploading; anything under ten renewals
    is refused before the store is touched."""
    for env, after, floor in ((clean_env(**s3.env()), "599", "600"), (_env(s3), "4.9", "5")):
        run = run_cli(
            "prune", f"s3://{BUCKET}/floor", "--keep", "1", "--abandoned-after", after, env=env
        )
        assert run.returncode == 2, run.stderr
        lines = run.stderr.splitlines()
        assert lines[0].startswith(f"error: --abandoned-after {after} is shorter than {floor} "), (
            lines
        )
        assert lines[1] == f"hint: give --abandoned-after {floor} or more (the default is a day)"


def test_a_dump_running_past_the_floor_is_never_taken_for_dead(s3: S3Server, db: Database) -> None:
    """A dump that runs well past the floor (renewals every 0.1 s: a floor of 1 s), with
    prune running with the shortest --abandoned-after all along: the dump's claim is
    renewed, prune leaves it alone, and the dump completes whole."""
    db.execute(
        "CREATE TABLE big (id int, pad text);"
        "INSERT INTO big SELECT g, md5(g::text) || repeat(md5((g % 7)::text), 3) "
        "FROM generate_series(1, 1000000) g"
    )
    env = {**_env(s3), "ASYNCSNAP_CLAIM_RENEW_SECONDS": "0.1"}
    # Through a link passing 4 MB a second: the backup is some 23 MB, so the dump runs past
    # the floor on any machine (3M rows at full speed took 2.2 s, then under 2 s, and the
    # test's "ran past the floor" became a race with the dump's speed).
    with slow_link(s3.endpoint, 4_000_000) as link:
        _run_alongside_prunes(s3, db, {**env, "AWS_ENDPOINT_URL": link.endpoint}, env)


def _run_alongside_prunes(
    s3: S3Server, db: Database, dump_env: dict[str, str], env: dict[str, str]
) -> None:
    """Dump (through ``dump_env``'s endpoint) while prune runs every half second."""
    dump = _start(db, "alive", dump_env)
    try:
        _wait_for(s3, "alive", dump, f"n/{CLAIM_NAME}")
        started, prunes = time.monotonic(), 0
        while dump.poll() is None:
            time.sleep(0.5)
            run = run_cli("prune", f"s3://{BUCKET}/alive", *_PRUNE, "1", env=env)
            assert run.returncode == 0, run.stderr
            assert not [line for line in run.stdout.splitlines() if line.startswith("removed ")]
            prunes += 1
        ran = time.monotonic() - started
    finally:
        if dump.poll() is None:  # failed above: not left running into the next test
            dump.kill()
    stdout, stderr = dump.communicate(timeout=120)
    assert dump.returncode == 0, stderr
    # it ran past twice the floor (1 s) and was pruned meanwhile
    assert ran > 2 and prunes >= 2, (ran, prunes)
    run = run_cli("verify", stdout.strip(), env=env)
    assert run.returncode == 0, run.stderr


def test_a_claim_0_6_s_old_is_never_taken_for_dead_by_its_listed_second(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing's modification times are whole seconds: a claim written at 12.65 lists
    as 12. Prune at 13.25 took it for 1.25 s old, past an --abandoned-after of 1 s, and removed
    a dump that had renewed its claim 0.6 s before (CI, with renewals every 0.1 s).
    Prune now takes the listing's second off a claim's age."""
    for variable, value in {**s3.env(), "ASYNCSNAP_CLAIM_RENEW_SECONDS": "0.1"}.items():
        monkeypatch.setenv(variable, value)
    url = StoreUrl.parse(f"s3://{BUCKET}/young")
    store = S3Store(url)
    while not 0.6 <= time.time() % 1 < 0.7:  # late in a second, which the listing rounds away
        time.sleep(0.01)
    written = time.time()
    store.put(f"n/{CLAIM_NAME}", orjson.dumps(claim_body("n")) + b"\n")
    listed = {o.key: o.modified for o in store.objects()}[f"n/{CLAIM_NAME}"]
    assert listed is not None and listed.microsecond == 0, listed  # the premise: whole seconds
    time.sleep(max(0.0, written + 0.6 - time.time()))
    pruned = prune_prefix(url, keep=1, abandoned_after=timedelta(seconds=1))
    assert pruned.abandoned == [], pruned
    assert pruned.reasons["n"] == "a dump claimed it recently: it may still be writing"
    assert keys(s3, "young") == [f"n/{CLAIM_NAME}"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("phase", "marker"),
    [
        ("just-claimed", CLAIM_NAME),
        ("uploading", "data/public.small"),
        ("verifying", "SHA256SUMS"),  # written just before --verify reads the files back
    ],
)
def test_a_dump_whose_objects_were_removed_never_completes(
    s3: S3Server, db: Database, phase: str, marker: str
) -> None:
    """A dump stopped (SIGSTOP: a frozen VM, a swapped-out host) long enough for its
    claim to look dead is removed by prune; resumed, it wrote its manifest and exited 0,
    a backup with missing files. Now it finds its objects gone before the manifest and
    fails: exit 4, "lost", and nothing under its name looks complete."""
    _tables(db)
    env = _env(s3)
    prefix = f"stopped-{phase}"
    dump = _start(db, prefix, env)
    _wait_for(s3, prefix, dump, f"n/{marker}")
    dump.send_signal(signal.SIGSTOP)
    try:
        time.sleep(6.5)  # past the 5 s given, plus the listing's whole second
        run = _prune(s3, prefix, "5")
        assert run.returncode == 0, run.stderr
        assert f"removed s3://{BUCKET}/{prefix}/n (a dump that died: no manifest)" in run.stdout
    finally:
        dump.send_signal(signal.SIGCONT)
    stdout, stderr = dump.communicate(timeout=120)
    assert dump.returncode == 4, stderr
    errors = [line for line in stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert len(errors) == 2, stderr
    assert errors[0].startswith(f"error: s3://{BUCKET}/{prefix}/n lost "), stderr
    assert errors[0].endswith(LOST), stderr
    assert errors[1] == "hint: nothing was completed; run the dump again"
    assert stdout == ""
    assert "n/manifest.json" not in keys(s3, prefix)
    run = run_cli("verify", f"s3://{BUCKET}/{prefix}/n", env=env)
    assert run.returncode == 5, run.stderr
