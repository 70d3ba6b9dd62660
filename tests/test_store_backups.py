"""Backups straight to an object store, against a real S3 server (SeaweedFS's weed mini):
dump, verify, inspect, restore and prune through s3:// URLs; a killed dump, a store that
goes away, wrong credentials, a missing bucket; encryption there."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyrage import x25519

from asyncsnap.errors import ExitCode, OutputExists
from asyncsnap.storage.prefix import CLAIM_NAME, BackupPrefix
from asyncsnap.storage.s3 import S3Store, StoreUrl
from throwaway.s3 import (
    ACCESS_KEY,
    ADMIN_KEY,
    ADMIN_SECRET,
    BUCKET,
    SECRET_KEY,
    RecordingProxy,
    S3Server,
    recording_proxy,
    s3_server,
    slow_link,
)

from .conftest import Database, Postgres, clean_env, fresh_database, run_cli
from .helpers import failed_with
from .test_dump import SHOP

README = Path(__file__).resolve().parents[1] / "README.md"
SHOP_COUNTS = {"customers": 50, "orders": 500, "order_lines": 1500, "audit.log": 20}


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


def cli_env(server: S3Server, **extra: str) -> dict[str, str]:
    """A CLI run's environment: no PG* variables, the server's AWS variables."""
    return clean_env(**{**server.env(), "ASYNCSNAP_STORE_RETRY_SECONDS": "3", **extra})


def keys(server: S3Server, prefix: str) -> list[str]:
    store = S3Store(StoreUrl.parse(f"s3://{BUCKET}/{prefix}"), environ=server.env())
    return sorted(o.key for o in store.objects())


def counts(db: Database) -> dict[str, int]:
    return {
        name: int(db.fetchval(f"SELECT count(*) FROM {name}"))  # names are ours
        for name in SHOP_COUNTS
    }


def test_dump_verify_inspect_restore_through_s3(
    s3: S3Server, db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """The whole round trip through the store, nothing written locally: the backup's
    objects are the manifest's files, SHA256SUMS, the manifest and the claim."""
    db.execute(SHOP)
    env = cli_env(s3)
    prefix = f"s3://{BUCKET}/roundtrip"
    run = run_cli("dump", db.dsn, "-o", prefix, "--verify", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    url = run.stdout.strip()
    assert url.startswith(prefix + "/backup_") and "\n" not in url
    name = url.rsplit("/", 1)[1]
    assert list(tmp_path.iterdir()) == []  # no local copy, no directory named s3:

    stored = keys(s3, f"roundtrip/{name}")
    assert json.loads(run_cli("inspect", url, "--json", env=env).stdout)["path"] == url
    store = S3Store(StoreUrl.parse(url), environ=s3.env())
    body = json.loads(b"".join(store.read("manifest.json")))
    listed = [f["path"] for t in body["tables"] for f in t["files"]]
    small = ["SHA256SUMS", "manifest.json", CLAIM_NAME, "schema/schema.pgdump", "schema/schema.sql"]
    assert stored == sorted(listed + small)
    run = run_cli("verify", url, env=env)
    assert run.returncode == 0 and run.stdout.startswith(f"OK {url}: 4 tables"), run.stderr

    with fresh_database(postgres, "asyncsnap_s3_target") as target:
        run = run_cli("restore", url, target.dsn, "-q", env=env)
        assert run.returncode == 0, run.stderr
        assert counts(target) == SHOP_COUNTS


def test_two_dumps_with_one_name_are_kept_apart(s3: S3Server, db: Database) -> None:
    """The claim is a conditional write: a second dump of the same name is refused before
    it writes anything, and cannot complete (or remove) the first one's backup."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    store = S3Store(StoreUrl.parse(f"s3://{BUCKET}/claims"), environ=s3.env())
    first = BackupPrefix.create(store, "nightly")
    with pytest.raises(OutputExists, match="another dump claimed that name"):
        BackupPrefix.create(store, "nightly")
    run = run_cli(
        "dump", db.dsn, "-o", f"s3://{BUCKET}/claims", "--name", "nightly", env=cli_env(s3)
    )
    failed_with(run, ExitCode.OUTPUT, f"s3://{BUCKET}/claims/nightly already exists")
    assert keys(s3, "claims") == [f"nightly/{CLAIM_NAME}"]
    first.abandon(keep_partial=False)
    assert keys(s3, "claims") == []


def _big_table(db: Database) -> None:
    db.execute(
        "CREATE TABLE big (id int, payload text);"
        "INSERT INTO big SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 1500000) g"
    )


# The upload rate of the link a dump that is to be stopped mid-upload goes through: the big
# table's backup is some 35 MB, so the dump uploads for half a minute on any machine.
SLOW_UPLOAD = 1_000_000


@contextlib.contextmanager
def _slow_dump(
    server: S3Server, db: Database, prefix: str, env: dict[str, str]
) -> Iterator[subprocess.Popen[str]]:
    """A dump of ``db`` to ``prefix`` whose uploads pass at SLOW_UPLOAD bytes a second:
    stopping it once it uploads (``_wait_for_claim``) is then never a race with its end."""
    with slow_link(server.endpoint, SLOW_UPLOAD) as link:
        dump = _start_dump(db, prefix, {**env, "AWS_ENDPOINT_URL": link.endpoint})
        try:
            yield dump
        finally:
            if dump.poll() is None:
                dump.kill()
            dump.communicate()


def _start_dump(db: Database, prefix: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "asyncsnap", "dump", db.dsn, "-o", prefix, "--name", "n", "-q"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _uploading(server: S3Server, prefix: str) -> bool:
    """Whether dump ``n`` under ``prefix`` is uploading a data file: a multipart upload
    under ``n/data/`` is open (the store's own list of them), or a data object is there."""
    import boto3  # type: ignore[import-untyped]

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )
    open_uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{prefix}/n/data/")
    if open_uploads.get("Uploads"):
        return True
    return any(k.startswith("n/data/") for k in keys(server, prefix))


def _wait_for_claim(server: S3Server, prefix: str, dump: subprocess.Popen[str]) -> None:
    """Until the dump has claimed its name and is uploading the big table's file (polled,
    with a deadline: a fixed sleep could kill it before any upload, or after the last)."""
    deadline = time.monotonic() + 60
    while f"n/{CLAIM_NAME}" not in keys(server, prefix) or not _uploading(server, prefix):
        assert dump.poll() is None, dump.communicate()
        assert time.monotonic() < deadline, "the dump never claimed its name and uploaded"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_mid_upload_leaves_nothing_that_looks_complete(s3: S3Server, db: Database) -> None:
    """A dump killed mid-upload leaves its claim (and any file it finished), never a
    manifest: readers refuse it, prune leaves it while it could be running and removes it
    once it is older than --abandoned-after."""
    _big_table(db)
    env = cli_env(s3)
    with _slow_dump(s3, db, f"s3://{BUCKET}/killed", env) as dump:
        _wait_for_claim(s3, "killed", dump)
        dump.send_signal(signal.SIGKILL)
        dump.communicate()
    left = keys(s3, "killed")
    assert f"n/{CLAIM_NAME}" in left and "n/manifest.json" not in left, left

    url = f"s3://{BUCKET}/killed/n"
    for command in (["verify", url], ["inspect", url]):
        run = run_cli(*command, env=env)
        failed_with(
            run, ExitCode.VERIFY, f"{url} has no manifest.json: not a complete asyncsnap backup"
        )
    run = run_cli("prune", f"s3://{BUCKET}/killed", "--keep", "1", env=env)
    assert run.returncode == 0 and "left alone 1" in run.stdout, run.stdout
    # A day has not passed: it might still be running, so it stays. (Compare the claim
    # only: the store may still be completing an upload the dump sent before it died.)
    assert f"n/{CLAIM_NAME}" in keys(s3, "killed")
    # With renewals every 0.1 s (the floor is then 1 s), a claim 2.5 s old is a dead dump's
    # (listed times are whole seconds: prune counts a second less than the listing says).
    time.sleep(2.5)  # time passing is the point: the claim ages
    env = cli_env(s3, ASYNCSNAP_CLAIM_RENEW_SECONDS="0.1")
    run = run_cli(
        "prune", f"s3://{BUCKET}/killed", "--keep", "1", "--abandoned-after", "1", env=env
    )
    assert run.returncode == 0, run.stderr
    assert f"removed s3://{BUCKET}/killed/n (a dump that died: no manifest)" in run.stdout
    assert keys(s3, "killed") == []


def test_sigterm_mid_upload_removes_everything_it_wrote(s3: S3Server, db: Database) -> None:
    """An interrupted dump (SIGTERM, as systemd or a CI runner stops it) aborts its uploads
    and removes what it wrote, the claim last: the name is free again."""
    _big_table(db)
    with _slow_dump(s3, db, f"s3://{BUCKET}/stopped", cli_env(s3)) as dump:
        _wait_for_claim(s3, "stopped", dump)
        dump.send_signal(signal.SIGTERM)
        stdout, stderr = dump.communicate(timeout=120)
    assert dump.returncode == 143, stderr
    assert stdout == "" and "error: interrupted by SIGTERM; nothing was kept" in stderr, stderr
    assert keys(s3, "stopped") == []


@pytest.mark.slow
def test_a_store_that_goes_away_fails_the_dump_cleanly(db: Database, tmp_path: Path) -> None:
    """The store stops mid-dump: bounded retries, then exit 4 with one error line and one
    hint line, no path on stdout; once the store is back, no manifest is there."""
    _big_table(db)
    with s3_server() as server:
        env = cli_env(server, ASYNCSNAP_STORE_RETRY_SECONDS="2")
        with _slow_dump(server, db, f"s3://{BUCKET}/gone", env) as dump:
            _wait_for_claim(server, "gone", dump)
            server.stop()
            stdout, stderr = dump.communicate(timeout=180)
        assert dump.returncode == 4, stderr
        errors = [line for line in stderr.splitlines() if line.startswith(("error:", "hint:"))]
        assert len(errors) == 2 and errors[0].startswith("error: could not write s3://"), stderr
        assert stdout == ""
        assert SECRET_KEY not in stderr
        server.start()
        assert "n/manifest.json" not in keys(server, "gone")
        run = run_cli("verify", f"s3://{BUCKET}/gone/n", env=env)
        failed_with(
            run,
            ExitCode.VERIFY,
            f"s3://{BUCKET}/gone/n has no manifest.json: not a complete asyncsnap backup",
        )


def test_wrong_credentials_fail_before_the_database_is_read(
    s3: S3Server, db: Database, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE t (id int)")
    env = cli_env(s3, AWS_SECRET_ACCESS_KEY="not-the-secret")
    run = run_cli("dump", db.dsn, "-o", f"s3://{BUCKET}/creds", env=env, cwd=tmp_path)
    assert run.returncode == 4, run.stderr
    error, hint = run.stderr.splitlines()
    assert "did not accept the credentials" in error and "AWS_SECRET_ACCESS_KEY" in hint
    assert "not-the-secret" not in run.stderr and ACCESS_KEY not in run.stderr
    assert run.stdout == "" and list(tmp_path.iterdir()) == []
    assert keys(s3, "creds") == []


def test_a_missing_bucket_is_named(s3: S3Server, db: Database) -> None:
    db.execute("CREATE TABLE t (id int)")
    env = cli_env(s3, AWS_ACCESS_KEY_ID=ADMIN_KEY, AWS_SECRET_ACCESS_KEY=ADMIN_SECRET)
    run = run_cli("dump", db.dsn, "-o", "s3://no-such-bucket/x", env=env)
    assert run.returncode == 4, run.stderr
    error, hint = run.stderr.splitlines()
    assert error == "error: could not list s3://no-such-bucket/x: the bucket does not exist"
    assert hint == "hint: create the bucket, or check its name"


def test_retention_on_a_prefix(s3: S3Server, db: Database) -> None:
    """dump --keep 2 into a prefix keeps the two newest default-named backups; a named
    backup and objects that are not backups are left alone."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    env = cli_env(s3)
    prefix = f"s3://{BUCKET}/retention"
    admin = S3Store(StoreUrl.parse(prefix), environ=s3.env())
    admin.put("notes/readme.txt", b"not a backup\n")
    run = run_cli("dump", db.dsn, "-o", prefix, "--name", "before-migration", env=env)
    assert run.returncode == 0, run.stderr
    made = []
    for _ in range(3):
        run = run_cli("dump", db.dsn, "-o", prefix, "--keep", "2", env=env)
        assert run.returncode == 0, run.stderr
        made.append(run.stdout.strip().rsplit("/", 1)[1])
    assert f"removed old backup {prefix}/{made[0]} (--keep 2)" in run.stderr
    names = sorted({k.split("/")[0] for k in keys(s3, "retention")})
    assert names == sorted(["before-migration", "notes", made[1], made[2]])
    run = run_cli("prune", prefix, "--keep", "1", "--dry-run", env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == f"would remove {prefix}/{made[1]}"
    run = run_cli("prune", f"{prefix}/{made[2]}", "--keep", "1", env=env)
    failed_with(run, ExitCode.USAGE, f"{prefix}/{made[2]} is a backup, not a prefix of backups")


def test_a_manifest_write_retried_after_it_landed_is_success(
    s3: S3Server, db: Database, tmp_path: Path
) -> None:
    """The manifest's conditional write, retried after a first attempt that was stored,
    finds its own bytes there: complete, not a failure that would remove the backup. Other
    bytes under that key are refused."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b")
    assert run.returncode == 0, run.stderr
    files = {
        p.relative_to(tmp_path / "b").as_posix(): p.read_bytes()
        for p in (tmp_path / "b").rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    body = (tmp_path / "b" / "manifest.json").read_bytes()
    store = S3Store(StoreUrl.parse(f"s3://{BUCKET}/commit"), environ=s3.env())
    for name, stored in (("mine", body), ("other", body.replace(b"{", b"{ ", 1))):
        prefix = BackupPrefix.create(store, name)
        for relpath, content in files.items():
            store.put(f"{name}/{relpath}", content)
        prefix.write_small_file("manifest.json", body)
        store.put(f"{name}/manifest.json", stored)  # what a first attempt left
        if name == "mine":
            assert prefix.commit() == f"s3://{BUCKET}/commit/mine"
        else:
            with pytest.raises(OutputExists):
                prefix.commit()
            prefix.abandon(keep_partial=True)


def test_an_encrypted_backup_in_a_store(
    s3: S3Server, db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """Written by a host with the public key only: verify checks it without the key
    (integrity) and with it (every line); restore needs the key; a changed byte in the
    store is refused; age's own CLI decrypts a data file fetched from the store."""
    db.execute(SHOP)
    identity = x25519.Identity.generate()
    key = tmp_path / "key.txt"
    key.write_text(f"{identity}\n")
    env = cli_env(s3)
    prefix = f"s3://{BUCKET}/sealed"
    run = run_cli("dump", db.dsn, "-o", prefix, "--encrypt-to", str(identity.to_public()), env=env)
    assert run.returncode == 0, run.stderr
    url = run.stdout.strip()
    run = run_cli("verify", url, env=env)
    assert run.returncode == 0 and "encrypted, so no line was read" in run.stdout, run.stdout
    run = run_cli("verify", url, "-i", str(key), env=env)
    assert run.returncode == 0 and "4 tables" in run.stdout, run.stderr
    with fresh_database(postgres, "asyncsnap_s3_sealed") as target:
        run = run_cli("restore", url, target.dsn, env=env)
        failed_with(run, ExitCode.USAGE, f"{url} is encrypted", "give the matching secret key file")
        run = run_cli("restore", url, target.dsn, "-i", str(key), "-q", env=env)
        assert run.returncode == 0, run.stderr
        assert counts(target) == SHOP_COUNTS

    store = S3Store(StoreUrl.parse(url), environ=s3.env())
    body = json.loads(b"".join(store.read("manifest.json")))
    orders = next(t for t in body["tables"] if t["name"] == "orders")["files"][0]["path"]
    stored = b"".join(store.read(orders))
    if shutil.which("age") and shutil.which("zstd"):
        (tmp_path / "orders.age").write_bytes(stored)
        age = subprocess.run(
            ["age", "-d", "-i", str(key), str(tmp_path / "orders.age")], capture_output=True
        )
        plain = subprocess.run(["zstd", "-dc"], input=age.stdout, capture_output=True)
        assert plain.stdout.count(b"\n") == 500
    changed = bytearray(stored)
    changed[len(changed) // 2] ^= 1
    store.put(orders, bytes(changed))
    for extra in ([], ["-i", str(key)]):
        run = run_cli("verify", url, *extra, env=env)
        failed_with(
            run, ExitCode.VERIFY, f"{orders}: ", "1 problem; do not restore from this backup"
        )


def test_credentials_from_an_aws_profile(s3: S3Server, db: Database, tmp_path: Path) -> None:
    """AWS_PROFILE reads the shared credentials file, as the AWS CLI does; no key in the
    environment."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[nightly]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    env = {
        k: v
        for k, v in cli_env(s3).items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    env.update(
        AWS_PROFILE="nightly",
        AWS_SHARED_CREDENTIALS_FILE=str(credentials),
        AWS_CONFIG_FILE=str(tmp_path / "no-config"),
    )
    run = run_cli("dump", db.dsn, "-o", f"s3://{BUCKET}/profile", "--name", "p", env=env)
    assert run.returncode == 0, run.stderr
    assert "p/manifest.json" in keys(s3, "profile")
    env["AWS_PROFILE"] = "nonesuch"
    run = run_cli("verify", f"s3://{BUCKET}/profile/p", env=env)
    failed_with(
        run,
        ExitCode.USAGE,
        "cannot use AWS_PROFILE=nonesuch: no such profile",
        "check the profile's name in ~/.aws/config and ~/.aws/credentials",
    )


def test_no_secret_reaches_a_log_or_the_backup(s3: S3Server, db: Database, tmp_path: Path) -> None:
    """The JSON log, the summary file and every stored object are free of the key."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    summary = tmp_path / "summary.json"
    run = run_cli(
        "dump",
        db.dsn,
        "-o",
        f"s3://{BUCKET}/secrets",
        "--log-format",
        "json",
        "--summary-json",
        str(summary),
        env=cli_env(s3),
    )
    assert run.returncode == 0, run.stderr
    text = run.stderr + summary.read_text()
    store = S3Store(StoreUrl.parse(f"s3://{BUCKET}/secrets"), environ=s3.env())
    for key in keys(s3, "secrets"):
        text += b"".join(store.read(key)).decode(errors="replace")
    assert SECRET_KEY not in text and ACCESS_KEY not in text


def readme_bucket_cron() -> tuple[str, str, str]:
    """The README's crontab for a bucket: its variable line and its command, and the AWS
    config file it relies on (the profile's block)."""
    text = README.read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```cron")[1:]]
    (block,) = [b for b in blocks if "s3://" in b]
    variable, line = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
    ini = [b.split("```", 1)[0] for b in text.split("```ini")[1:]]
    (config,) = [b for b in ini if "[profile nightly]" in b]
    return variable, line.split(None, 5)[5], config


def test_readme_bucket_crontab_keeps_encrypted_verified_backups(
    s3: S3Server, db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """The README's crontab line for a bucket, run three nights with cron's environment
    (its AWS_PROFILE, the README's profile with the test server as its endpoint_url, no
    other AWS_* variable, no PG* or DATABASE_URL): the two newest backups remain (--keep
    2), each encrypted and verified, the summary says so, nothing is mailed, no request
    goes anywhere but the server; restoring the newest with the key gives the database
    back."""
    db.execute(SHOP)
    variable, command, config = readme_bucket_cron()
    assert variable == "AWS_PROFILE=nightly"
    private = "https://s3.backups.internal:9000"
    assert f"endpoint_url = {private}" in config
    (tmp_path / "config").write_text(config.replace(private, s3.endpoint))
    identity = x25519.Identity.generate()
    (tmp_path / "key.txt").write_text(f"{identity}\n")
    (tmp_path / "recipients.txt").write_text(f"# shop\n{identity.to_public()}\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / ".env").write_text(f"DATABASE_URL={db.dsn}\n")
    (tmp_path / "credentials").write_text(
        f"[nightly]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    for old, new in {
        "/srv/app": str(tmp_path / "app"),
        "/usr/local/bin/asyncsnap": f"{shlex.quote(sys.executable)} -m asyncsnap",
        "s3://acme-backups/shop": f"s3://{BUCKET}/cron",
        "/etc/asyncsnap/recipients.txt": str(tmp_path / "recipients.txt"),
        "/var/lib/asyncsnap/last-run.json": str(tmp_path / "last-run.json"),
        "/var/log/asyncsnap.jsonl": str(tmp_path / "asyncsnap.jsonl"),
        "mail -s backup ops@example.com": f"cat >> {tmp_path / 'mail'}",
        "--keep 7": "--keep 2",
    }.items():
        assert old in command, f"the README's bucket crontab line no longer has {old!r}"
        command = command.replace(old, new)
    env = {k: v for k, v in clean_env().items() if k in ("PATH", "HOME", "LANG")}
    env.update(
        AWS_PROFILE="nightly",
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"),
        AWS_CONFIG_FILE=str(tmp_path / "config"),
    )
    with recording_proxy() as proxy:
        env.update(proxy.proxy_env())
        for _ in range(3):
            subprocess.run(["/bin/sh", "-c", command], env=env, check=True, timeout=120)
        assert proxy.seen == []
    assert not (tmp_path / "mail").exists()
    outcome = json.loads((tmp_path / "last-run.json").read_text())
    assert outcome["ok"] and outcome["verified"] and outcome["path"].startswith("s3://")
    names = sorted({k.split("/")[0] for k in keys(s3, "cron")})
    assert len(names) == 2 and outcome["path"].endswith("/" + names[-1])
    logged = [json.loads(line) for line in (tmp_path / "asyncsnap.jsonl").read_text().splitlines()]
    assert any("removed old backup" in str(entry.get("message")) for entry in logged)
    with fresh_database(postgres, "asyncsnap_s3_cron") as target:
        run = run_cli(
            "restore", outcome["path"], target.dsn, "-i", str(tmp_path / "key.txt"), env=cli_env(s3)
        )
        assert run.returncode == 0, run.stderr
        assert counts(target) == SHOP_COUNTS


LEGACY_CLAIM = b'{"tool":"asyncsnap","host":"h","pid":1,"started_at":"2026-01-01T00:00:00Z"}\n'


def test_prune_on_a_prefix_removes_only_what_its_dumps_wrote(s3: S3Server, db: Database) -> None:
    """A folder with a `claim.json` that is not asyncsnap's (a finance team's, beside
    their report) is not a dead dump: nothing in it is touched. A dead dump's own objects
    go, a foreign object beside them stays; a backup being removed keeps what no dump
    writes (`data/notours.txt`, `manifest.json.bak`, a `claim.json` that is no claim); a
    claim of 0.8.0 (no backup name) or naming another backup is left for a person, except
    in a complete backup being removed. The summary counts every removal."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    env = cli_env(s3)
    prefix = f"s3://{BUCKET}/foreign"
    store = S3Store(StoreUrl.parse(prefix), environ=s3.env())
    made = [f"backup_2026010{i}T000000Z" for i in (1, 2, 3)]
    for name in made:
        run = run_cli("dump", db.dsn, "-o", prefix, "--name", name, env=env)
        assert run.returncode == 0, run.stderr
    backup_keys = keys(s3, f"foreign/{made[0]}")
    data_key = next(k for k in backup_keys if k.startswith("data/"))
    foreign = {
        "reports/claim.json": b'{"owner": "finance", "quarter": 3}\n',
        "reports/q3.xlsx": b"PK\x03\x04 a spreadsheet",
        f"{made[0]}/data/notours.txt": b"mine",
        f"{made[0]}/manifest.json.bak": b"{}",
        f"{made[0]}.partialx/claim.json": b'{"tool": "other"}',
        f"{made[0]}.partialx/{data_key}": b"not a dump's",
        "old/claim.json": LEGACY_CLAIM,
        f"old/{data_key}": b"written by 0.8.0, perhaps",
        "notes.txt": b"an object directly in the prefix",
    }
    for key, body in foreign.items():
        store.put(key, body)
    store.put(f"{made[1]}/claim.json", LEGACY_CLAIM)  # a complete 0.8.0 backup's: goes with it
    foreign[f"{made[0]}/claim.json"] = b'{"tool": "asyncsnap"}'  # not a claim: stays
    store.put(f"{made[0]}/claim.json", foreign[f"{made[0]}/claim.json"])
    dead = BackupPrefix.create(store, "dead")  # a real claim, then a killed dump's files
    store.put(f"dead/{data_key}", b"half a backup")
    store.put("dead/SHA256SUMS", b"")
    store.put("dead/reports/q3.xlsx", b"someone else's, beside a dead dump")
    copied = BackupPrefix.create(store, "elsewhere")  # a claim copied to another name
    store.put("copied/claim.json", b"".join(store.read("elsewhere/claim.json")))
    store.put(f"copied/{data_key}", b"?")
    copied.abandon(keep_partial=False)
    assert dead.name == "dead"

    dead._stop_renewal()  # as killed: its claim is no longer renewed
    time.sleep(2.5)  # time passing is the point: older than 1 s, plus the listing's second
    env = cli_env(s3, ASYNCSNAP_CLAIM_RENEW_SECONDS="0.1")  # floor 1 s
    run = run_cli("prune", prefix, "--keep", "1", "--abandoned-after", "1", env=env)
    assert run.returncode == 0, run.stderr
    left = keys(s3, "foreign")
    expected = sorted(
        [*foreign, "dead/reports/q3.xlsx", "copied/claim.json", f"copied/{data_key}"]
        + [f"{made[2]}/{k}" for k in keys(s3, f"foreign/{made[2]}")]
    )
    assert left == expected
    lines = run.stdout.splitlines()
    assert f"removed {prefix}/{made[0]}" in lines and f"removed {prefix}/{made[1]}" in lines
    assert f"removed {prefix}/dead (a dump that died: no manifest)" in lines
    for key in (
        f"{made[0]}/data/notours.txt",
        f"{made[0]}/manifest.json.bak",
        f"{made[0]}/claim.json",
        "dead/reports/q3.xlsx",
    ):
        assert f"left alone {prefix}/{key} (not written by asyncsnap)" in lines, run.stdout
    assert f"left alone {prefix}/reports (its claim.json is not asyncsnap's)" in lines
    assert any(
        line.startswith(f"left alone {prefix}/old (a claim of asyncsnap 0.8.0") for line in lines
    )
    assert f"left alone {prefix}/copied (its claim.json names another backup)" in lines
    assert lines[-1].startswith("kept 1, removed 3, left alone 5 ")
    assert "4 files not written by asyncsnap" in lines[-1]


def free_port() -> int:
    """A port nothing listens on: requests there are refused at once."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def aws_env(where: Path, proxy: RecordingProxy, *, config: str, **extra: str) -> dict[str, str]:
    """A CLI run's environment with no AWS_* variable of the machine's: the profile
    `nightly` (config file ``config``, its keys in a credentials file), requests to any
    host but loopback sent to ``proxy``, and ``extra``."""
    where.mkdir(exist_ok=True)
    (where / "config").write_text(config)
    (where / "credentials").write_text(
        f"[nightly]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    proxies = {k.lower() for k in proxy.proxy_env()}
    env = {
        k: v
        for k, v in clean_env().items()
        if not k.startswith("AWS_") and k.lower() not in proxies
    }
    env.update(
        {
            "AWS_PROFILE": "nightly",
            "AWS_CONFIG_FILE": str(where / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(where / "credentials"),
            "ASYNCSNAP_STORE_RETRY_SECONDS": "3",
            **proxy.proxy_env(),
            **extra,
        }
    )
    return env


def test_a_profiles_endpoint_url_is_used_and_nothing_goes_elsewhere(
    s3: S3Server, db: Database, tmp_path: Path
) -> None:
    """Issue 22, 13: AWS_PROFILE's endpoint_url (the AWS config file), nothing else set:
    dump, verify and prune talk to that server, and no request goes anywhere else (every
    request for another host would reach the recording proxy instead of the network).
    The control: the same profile without endpoint_url sends its request to AWS, which
    the proxy sees, and the run fails (exit 4) without leaving the machine."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    prefix = f"s3://{BUCKET}/profile-endpoint"
    with recording_proxy() as proxy:
        env = aws_env(
            tmp_path / "private",
            proxy,
            config=f"[profile nightly]\nregion = us-east-1\nendpoint_url = {s3.endpoint}\n",
        )
        run = run_cli("dump", db.dsn, "-o", prefix, "--name", "p", env=env)
        assert run.returncode == 0, run.stderr
        for command in (["verify", f"{prefix}/p"], ["prune", prefix, "--keep", "1"]):
            run = run_cli(*command, env=env)
            assert run.returncode == 0, run.stderr
        assert "p/manifest.json" in keys(s3, "profile-endpoint")
        assert proxy.seen == []

        aws = aws_env(tmp_path / "aws", proxy, config="[profile nightly]\nregion = us-east-1\n")
        run = run_cli("verify", f"{prefix}/p", env=aws)
        failed_with(
            run,
            ExitCode.OUTPUT,
            f"could not read {prefix}/p/manifest.json: the store did not answer after retries",
            "is the store reachable from here? requests went to AWS's endpoint for the region",
        )
        assert proxy.seen and proxy.seen[0].startswith(b"CONNECT s3.us-east-1.amazonaws.com:443")


def test_the_endpoint_is_chosen_in_the_aws_clis_order(s3: S3Server, tmp_path: Path) -> None:
    """--endpoint-url, then AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the s3 endpoint_url of
    the profile's [services] section, the profile's endpoint_url; each time the first
    one set is the server and every later one a port where nothing listens, so a run
    succeeds only if the first one won. AWS_IGNORE_CONFIGURED_ENDPOINT_URLS skips all but
    --endpoint-url; the profile's ignore_configured_endpoint_urls sends to AWS."""
    dead = f"http://127.0.0.1:{free_port()}"
    prefix = f"s3://{BUCKET}/endpoint-order"

    def config(services: str, profile: str, extra: str = "") -> str:
        return (
            f"[profile nightly]\nregion = us-east-1\nendpoint_url = {profile}\n"
            f"services = here\n{extra}\n[services here]\ns3 =\n  endpoint_url = {services}\n"
        )

    with recording_proxy() as proxy:
        for label, option, variables, files in (
            (
                "--endpoint-url",
                [s3.endpoint],
                {"AWS_ENDPOINT_URL_S3": dead, "AWS_ENDPOINT_URL": dead},
                config(dead, dead),
            ),
            (
                "AWS_ENDPOINT_URL_S3",
                [],
                {"AWS_ENDPOINT_URL_S3": s3.endpoint, "AWS_ENDPOINT_URL": dead},
                config(dead, dead),
            ),
            ("AWS_ENDPOINT_URL", [], {"AWS_ENDPOINT_URL": s3.endpoint}, config(dead, dead)),
            ("services section", [], {}, config(s3.endpoint, dead)),
            (
                "ignore, but --endpoint-url",
                [s3.endpoint],
                {"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true", "AWS_ENDPOINT_URL": dead},
                config(dead, dead),
            ),
        ):
            env = aws_env(tmp_path / label.replace(" ", "-"), proxy, config=files, **variables)
            args = ["--endpoint-url", *option] if option else []
            run = run_cli("prune", prefix, "--keep", "1", *args, env=env)
            assert run.returncode == 0, (label, run.stderr)
        assert proxy.seen == []

        ignoring = config(s3.endpoint, s3.endpoint, "ignore_configured_endpoint_urls = true")
        env = aws_env(tmp_path / "ignoring", proxy, config=ignoring)
        run = run_cli("prune", prefix, "--keep", "1", env=env)
        failed_with(
            run,
            ExitCode.OUTPUT,
            f"could not read {prefix}/manifest.json: the store did not answer after retries",
            "is the store reachable from here? requests went to AWS's endpoint for the region",
        )
        assert proxy.seen and proxy.seen[0].startswith(b"CONNECT s3.us-east-1.amazonaws.com:443")


def test_aws_settings_that_cannot_be_honoured_are_refused_before_any_request(
    s3: S3Server, tmp_path: Path
) -> None:
    """A FIPS or dual-stack endpoint, a services section that is missing, an endpoint with
    credentials in it, AWS_ENDPOINT_URL_S3 under AWS_IGNORE_CONFIGURED_ENDPOINT_URLS
    (obstore would read it anyway), obstore's own AWS_ENDPOINT, a flag that is neither
    true nor false, a profile that does not exist: exit 2, one error and one hint line,
    no request sent anywhere, no secret shown."""
    profile = f"[profile nightly]\nregion = us-east-1\nendpoint_url = {s3.endpoint}\n"
    secret_url = "http://someone:pw-in-url@127.0.0.1:9000"
    with recording_proxy() as proxy:
        for label, files, variables, message in (
            ("fips", profile, {"AWS_USE_FIPS_ENDPOINT": "true"}, "AWS_USE_FIPS_ENDPOINT asks"),
            ("dualstack", profile + "use_dualstack_endpoint = true\n", {}, "use_dualstack"),
            ("services", profile + "services = gone\n", {}, "no [services gone]"),
            (
                "credentials in url",
                f"[profile nightly]\nendpoint_url = {secret_url}\n",
                {},
                "has credentials, a query or a fragment",
            ),
            (
                "ignore with the s3 variable",
                profile,
                {"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true", "AWS_ENDPOINT_URL_S3": s3.endpoint},
                "AWS_ENDPOINT_URL_S3 is set",
            ),
            ("obstore's variable", "", {"AWS_ENDPOINT": s3.endpoint}, "AWS_ENDPOINT is set"),
            ("not a flag", profile, {"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "1"}, "neither true"),
            ("no profile", profile, {"AWS_PROFILE": "nonesuch"}, "AWS_PROFILE=nonesuch"),
        ):
            env = aws_env(tmp_path / label.replace(" ", "-"), proxy, config=files, **variables)
            run = run_cli("prune", f"s3://{BUCKET}/refused", "--keep", "1", env=env)
            assert run.returncode == 2, (label, run.stderr)
            error, hint = run.stderr.splitlines()
            assert error.startswith("error: ") and message in error, (label, error)
            assert hint.startswith("hint: "), (label, hint)
            assert "pw-in-url" not in run.stderr and SECRET_KEY not in run.stderr
        assert proxy.seen == []


EQUAL_SHOP = re.compile(
    r"equal: the database holds exactly the backup's rows \(4 tables, 2070 rows, "
    r"3 sequences; fingerprints from the (files|manifest); \d+\.\d\ds\)"
)


def test_compare_of_a_backup_in_the_store_with_a_database(s3: S3Server, db: Database) -> None:
    """compare reads a backup straight from the store: against the database it was dumped
    from, exit 0 and one `equal:` line; after one row of orders changed (same count), exit
    7, one error line naming public.orders and the README's hint."""
    db.execute(SHOP)
    env = cli_env(s3)
    run = run_cli("dump", db.dsn, "-o", f"s3://{BUCKET}/compared", "--name", "b", "-q", env=env)
    assert run.returncode == 0, run.stderr
    url = run.stdout.strip()
    same = run_cli("compare", url, db.dsn, env=env)
    assert (same.returncode, same.stderr) == (0, ""), same.stderr
    (line,) = same.stdout.splitlines()
    assert EQUAL_SHOP.fullmatch(line), line

    db.execute("UPDATE orders SET total = total + 1 WHERE id = 7")
    run = run_cli("compare", url, db.dsn, env=env)
    assert (run.returncode, run.stdout) == (ExitCode.DIFFERENT, ""), run.stderr
    error, hint = run.stderr.splitlines()
    assert error.startswith(
        "error: public.orders: the same number of rows (500) but not the same rows (fingerprint "
    ), error
    assert hint == "hint: 1 difference: the database does not hold exactly the backup's rows"
