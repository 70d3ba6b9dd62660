"""Manifest serialization and the reader's checks, in the order readers must do them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from asyncsnap import format as manifest
from asyncsnap.errors import VerificationFailed

BODY = {"format": "asyncsnap", "format_version": 1, "tables": [{"name": "ünï", "rows": 3}]}


def write(tmp_path: Path, content: bytes) -> Path:
    (tmp_path / manifest.MANIFEST_NAME).write_bytes(content)
    return tmp_path


def test_round_trip_and_checksum(tmp_path: Path) -> None:
    loaded = manifest.load(write(tmp_path, manifest.serialize(BODY)))
    assert loaded["tables"] == BODY["tables"]
    assert loaded[manifest.CHECKSUM_KEY] == manifest.checksum(BODY)


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_checksum_reproducible_with_jq(tmp_path: Path) -> None:
    path = write(tmp_path, manifest.serialize(BODY)) / manifest.MANIFEST_NAME
    out = subprocess.run(
        ["jq", "-cjS", f"del(.{manifest.CHECKSUM_KEY})", str(path)], capture_output=True, check=True
    ).stdout
    assert out == manifest.canonical_bytes(BODY)


def test_edited_manifest_is_refused(tmp_path: Path) -> None:
    data = json.loads(manifest.serialize(BODY))
    data["tables"][0]["rows"] = 4
    with pytest.raises(VerificationFailed, match="does not match its own checksum"):
        manifest.load(write(tmp_path, json.dumps(data).encode()))


def test_newer_format_refused_before_checksum(tmp_path: Path) -> None:
    body = {**BODY, "format_version": manifest.FORMAT_VERSION + 1}
    with pytest.raises(VerificationFailed, match=f"format version {manifest.FORMAT_VERSION + 1}"):
        manifest.load(write(tmp_path, json.dumps(body).encode()))  # no checksum at all


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[]", b'{"format": "other"}', b'{"format": "asyncsnap", "format_version": "1"}'],
)
def test_not_a_manifest(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(VerificationFailed):
        manifest.load(write(tmp_path, content))


def test_missing_manifest_means_incomplete(tmp_path: Path) -> None:
    with pytest.raises(VerificationFailed, match="not a complete asyncsnap backup"):
        manifest.load(tmp_path)


def test_sha256sums_format() -> None:
    assert manifest.sha256sums([("data/a.ndjson.zst", "ab" * 32)]) == (
        f"{'ab' * 32}  data/a.ndjson.zst\n".encode()
    )
