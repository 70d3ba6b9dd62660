"""The object store layer against a real S3 server (SeaweedFS): streaming, conditional
writes, and failures named without credentials."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import zstandard

from asyncsnap.errors import ExitCode, OutputExists, StoreFailed, UsageError
from asyncsnap.storage.files import DataFileWriter
from asyncsnap.storage.s3 import S3Store, StoreSink, StoreUrl
from throwaway.s3 import ADMIN_KEY, ADMIN_SECRET, BUCKET, SECRET_KEY, S3Server, s3_server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


def store(server: S3Server, prefix: str, **env: str) -> S3Store:
    return S3Store(StoreUrl.parse(f"s3://{BUCKET}/{prefix}"), environ=server.env(**env))


def test_store_urls_are_checked() -> None:
    assert StoreUrl.parse("s3://backups/a/b/") == StoreUrl("s3", "backups", "a/b")
    assert str(StoreUrl.parse("gs://backups")) == "gs://backups"
    assert StoreUrl.parse("s3://backups/a").key("manifest.json") == "a/manifest.json"
    for bad, message in (
        ("s3://key:secret@backups/a", "credentials in an object store URL"),
        ("s3://backups/a/../b", r"\.\. segment"),
        ("s3://Bad_Bucket!/a", "not a bucket name"),
        ("s3://backups/a?x=1", "query"),
        ("ftp://backups/a", "not an object store URL"),
    ):
        with pytest.raises(UsageError, match=message):
            StoreUrl.parse(bad)


def test_a_streamed_object_round_trips(s3: S3Server) -> None:
    """20 MiB in 256 KiB writes (three multipart parts), read back in chunks."""
    target = store(s3, "round-trip")
    block = os.urandom(256 * 1024)
    digest = hashlib.sha256()
    with target.writer("data/file.bin") as out:
        for i in range(80):
            piece = block[i:] + block[:i]
            out.write(piece)
            digest.update(piece)
    read = hashlib.sha256()
    for chunk in target.read("data/file.bin"):
        read.update(chunk)
    assert read.hexdigest() == digest.hexdigest()
    [listed] = target.objects()
    assert listed.key == "data/file.bin" and listed.size == 80 * len(block)


def test_a_failed_stream_leaves_no_object(s3: S3Server) -> None:
    """An error mid-upload (parts already sent) abandons the upload: nothing is listed
    under the key, so nothing half-written can look like a file."""
    target = store(s3, "failed-stream")
    block = os.urandom(1024 * 1024)
    with pytest.raises(RuntimeError, match="the dump failed"), target.writer("big.bin") as out:
        for _ in range(20):
            out.write(block)
        raise RuntimeError("the dump failed")
    assert target.objects() == []


def test_put_new_refuses_a_key_that_exists(s3: S3Server) -> None:
    """Two dumps completing one backup: the second manifest write is refused (exit 4)."""
    target = store(s3, "conditional")
    target.put_new("b/manifest.json", b"first")
    with pytest.raises(OutputExists, match="already exists") as caught:
        target.put_new("b/manifest.json", b"second")
    assert caught.value.exit_code == ExitCode.OUTPUT
    assert b"".join(target.read("b/manifest.json")) == b"first"


def test_wrong_credentials_fail_clearly_and_never_show_the_secret(s3: S3Server) -> None:
    wrong = store(s3, "x", AWS_SECRET_ACCESS_KEY="not-the-secret")
    with pytest.raises(StoreFailed) as caught:
        wrong.check_access()
    message = f"{caught.value.message} {caught.value.hint}"
    assert f"s3://{BUCKET}/x" in message and caught.value.exit_code == ExitCode.OUTPUT
    assert "not-the-secret" not in message and SECRET_KEY not in message
    assert "did not accept the credentials" in message and "SignatureDoesNotMatch" in message
    assert "<?xml" not in message and "AWS4-HMAC" not in message  # no body, no signature
    with pytest.raises(StoreFailed, match="access denied"):  # a bucket it may not use
        S3Store(StoreUrl.parse("s3://elsewhere/x"), environ=s3.env()).check_access()


def test_a_missing_bucket_is_named(s3: S3Server) -> None:
    admin = s3.env(AWS_ACCESS_KEY_ID=ADMIN_KEY, AWS_SECRET_ACCESS_KEY=ADMIN_SECRET)
    missing = S3Store(StoreUrl.parse("s3://no-such-bucket/x"), environ=admin)
    with pytest.raises(StoreFailed, match="s3://no-such-bucket") as caught:
        missing.check_access()
    assert "bucket" in f"{caught.value.message} {caught.value.hint}"


def test_a_store_that_goes_away_fails_within_the_retry_bound() -> None:
    """The server stopped mid-upload: retried with backoff, then one clear error (exit
    4), not a hang."""
    with s3_server() as server:
        target = S3Store(
            StoreUrl.parse(f"s3://{BUCKET}/gone"),
            environ=server.env(),
            retry_timeout=timedelta(seconds=5),
        )
        target.check_access()
        block = os.urandom(1024 * 1024)
        started = time.monotonic()
        with pytest.raises(StoreFailed) as caught, target.writer("big.bin") as out:
            for i in range(64):
                out.write(block)
                if i == 12:  # a part is up; the next ones meet a stopped server
                    server.stop()
                    started = time.monotonic()
        assert time.monotonic() - started < 60
        assert caught.value.exit_code == ExitCode.OUTPUT
        assert "gone/big.bin" in caught.value.message


def test_a_data_file_streams_to_the_store_with_its_hash(s3: S3Server, tmp_path: Path) -> None:
    """The dump's writer (count, compress, hash) over a store sink: the object is the
    file a local dump writes, byte for byte, and its sha256 is the one recorded."""
    lines = b"".join(b'{"id":%d,"pad":"%032x"}\n' % (i, i * 7919) for i in range(200_000))
    target = store(s3, "data-file")
    name = "b/data/public.t-0123456789ab.ndjson.zst"
    remote = DataFileWriter(tmp_path, name, "zstd", sink=StoreSink(target, name))
    local = DataFileWriter(tmp_path, "local.ndjson.zst", "zstd")
    for writer in (remote, local):
        for start in range(0, len(lines), 300_001):  # lines cross writes, as COPY's do
            writer.write(lines[start : start + 300_001])
        writer.close_data()
    stored, kept = remote.finish(), local.finish()
    body = b"".join(target.read(name))
    assert body == (tmp_path / "local.ndjson.zst").read_bytes()
    assert stored.sha256 == hashlib.sha256(body).hexdigest() == kept.sha256
    assert stored.rows == 200_000 and stored.stored_bytes == len(body)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(body) == lines
    assert not (tmp_path / "b").exists()  # nothing local


def test_a_discarded_data_file_leaves_no_object(s3: S3Server, tmp_path: Path) -> None:
    target = store(s3, "discarded")
    writer = DataFileWriter(tmp_path, "x.ndjson", "none", sink=StoreSink(target, "x.ndjson"))
    for _ in range(12):  # more than one part already sent
        writer.write(os.urandom(1024 * 1024).hex().encode()[: 1024 * 1024] + b"\n")
    writer.discard()
    writer.discard()  # twice is fine, as for a local file
    assert target.objects() == []


@pytest.mark.parametrize(
    ("variables", "profile", "services"),
    [
        ({}, "", ""),
        ({}, "endpoint_url = http://127.0.0.1:1111", ""),
        ({}, "endpoint_url = http://127.0.0.1:1111", "http://127.0.0.1:2222"),
        ({"AWS_ENDPOINT_URL": "http://127.0.0.1:3333"}, "endpoint_url = http://p:1", "http://s:2"),
        (
            {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:4444", "AWS_ENDPOINT_URL": "http://g:3"},
            "endpoint_url = http://p:1",
            "http://s:2",
        ),
        ({"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}, "endpoint_url = http://p:1", ""),
        (
            {"AWS_ENDPOINT_URL": "http://g:3"},
            "endpoint_url = http://p:1\nignore_configured_endpoint_urls = true",
            "http://s:2",
        ),
        ({"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "false"}, "endpoint_url = http://p:1", ""),
    ],
)
def test_the_endpoint_is_the_one_botocore_resolves(
    variables: dict[str, str],
    profile: str,
    services: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """awsconfig.resolve picks the endpoint the AWS SDK for Python (the AWS CLI's library)
    gives an S3 client for the same environment and config file; none where it would use
    AWS's own. No request is made: creating a client sends nothing."""
    import boto3  # type: ignore[import-untyped]

    from asyncsnap.storage import awsconfig

    config = tmp_path / "config"
    section = f"services = here\n\n[services here]\ns3 =\n  endpoint_url = {services}\n"
    config.write_text(
        f"[profile nightly]\nregion = us-east-1\n{profile}\n" + (section if services else "")
    )
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_PROFILE", "nightly")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    ours = awsconfig.resolve(os.environ).endpoint
    theirs = boto3.Session().client("s3").meta.endpoint_url
    if ours is None:
        assert theirs.endswith(".amazonaws.com"), theirs
    else:
        assert ours == theirs


@pytest.mark.parametrize(
    "variables",
    [
        {},
        {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2"},
        {"AWS_DEFAULT_REGION": "us-west-2"},
        {"AWS_ENDPOINT_URL": "http://127.0.0.1:3333"},
        {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:4444", "AWS_ENDPOINT_URL": "http://g:3"},
        {"AWS_ENDPOINT_URL": "http://g:3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"},
        {"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "maybe"},
        {"AWS_USE_FIPS_ENDPOINT": "true"},
        {"AWS_ENDPOINT_URL": "ftp://x"},
        {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t"},
        {"AWS_ACCESS_KEY_ID": "k"},
    ],
)
def test_without_a_profile_or_files_the_settings_are_botocores(
    variables: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No profile named and no shared files: botocore is not imported (14 MiB of peak
    RSS), and every setting, or the refusal, is what reading them with botocore gives."""
    from asyncsnap.errors import UsageError
    from asyncsnap.storage import awsconfig

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    environ = {
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        **variables,
    }

    def outcome() -> object:
        try:
            settings = awsconfig.resolve(environ)
        except UsageError as exc:
            return ("refused", str(exc), exc.hint)
        return replace(settings, session=None)

    assert awsconfig._nothing_to_read(environ)
    ours = outcome()
    monkeypatch.setattr(awsconfig, "_nothing_to_read", lambda environ: False)
    assert ours == outcome()
    (tmp_path / "no-config").write_text("[default]\n")
    monkeypatch.undo()
    assert not awsconfig._nothing_to_read(environ)  # a file to read: botocore reads it


def test_an_s3_store_with_keys_in_the_environment_imports_no_botocore(s3: S3Server) -> None:
    code = (
        "import sys\n"
        "from asyncsnap.storage.s3 import S3Store, StoreUrl\n"
        "S3Store(StoreUrl.parse('s3://backups/x')).check_access()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('boto', 'botocore'))))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=s3.env(), capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
