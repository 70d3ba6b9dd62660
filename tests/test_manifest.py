"""Manifest serialization and the reader's checks, in the order readers must do them."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncsnap import format as manifest
from asyncsnap import jsonload
from asyncsnap.errors import VerificationFailed
from asyncsnap.storage.files import BackupDirectory

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


# --- the dump's manifest serialized a table at a time (issue 24: memory at 10,000 tables)

_NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
_COLUMNS = st.builds(
    manifest.BackupColumn,
    name=_NAMES,
    type=st.sampled_from(["integer", "text", 'public."odd\ntype"', "numeric(10,2)[]"]),
    encoding=st.sampled_from(["json", "text", "array"]),
    not_null=st.booleans(),
    generated=st.none() | _NAMES,
    identity=st.sampled_from([None, "a", "d"]),
)
_FILES = st.builds(
    manifest.BackupFile,
    path=_NAMES.map(lambda n: f"data/{n}.ndjson.zst"),
    rows=st.integers(0, 2**63 - 1),
    bytes=st.integers(0, 2**40),
    stored_bytes=st.integers(0, 2**40),
    sha256=st.just("ab" * 32),
    longest_line=st.none() | st.integers(1, 2**31),
    pages=st.none() | st.tuples(st.integers(0, 10**6), st.none() | st.integers(0, 10**6)),
    fingerprint=st.none() | st.just("cd" * 32),
)
_FOREIGN_KEYS = st.builds(
    manifest.BackupForeignKey,
    name=_NAMES,
    columns=st.tuples(_NAMES),
    references=st.tuples(_NAMES, _NAMES),
    ref_columns=st.tuples(_NAMES),
    deferrable=st.booleans(),
    initially_deferred=st.booleans(),
)
_TABLES = st.builds(
    manifest.BackupTable,
    schema=_NAMES,
    name=_NAMES,
    kind=st.sampled_from(["table", "partitioned"]),
    parent=st.none() | st.tuples(_NAMES, _NAMES),
    rows=st.integers(0, 2**63 - 1),
    columns=st.lists(_COLUMNS, max_size=4).map(tuple),
    files=st.lists(_FILES, max_size=3).map(tuple),
    row_security=st.booleans(),
    primary_key=st.lists(_NAMES, max_size=2).map(tuple),
    foreign_keys=st.lists(_FOREIGN_KEYS, max_size=2).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(tables=st.lists(_TABLES, max_size=6), settings_=st.dictionaries(_NAMES, _NAMES))
def test_manifest_serialized_a_table_at_a_time_is_the_whole_serialized(
    tables: list[manifest.BackupTable], settings_: dict[str, str]
) -> None:
    written = manifest.Manifest(
        format_version=manifest.FORMAT_VERSION,
        compression="zstd",
        settings=settings_,
        tables=tuple(tables),
        sequences=(),
        started_at="2026-12-05T00:00:00Z",
    )
    whole = manifest.serialize(written.to_json())
    assert manifest.serialize_manifest(written) == whole
    with tempfile.TemporaryDirectory() as parent:  # a local backup streams it to its file
        backup = BackupDirectory.create(Path(parent), "b")
        backup.write_manifest(written)
        assert (backup.path / manifest.MANIFEST_NAME).read_bytes() == whole
        # Read back (checksum checked) with its tables streamed, as open_backup reads it,
        # and whole: the same body.
        streamed = manifest.load(backup.path, streamed=True)
        if isinstance(streamed["tables"], jsonload.StreamedArray):
            streamed["tables"] = streamed["tables"].materialized()
        else:  # parsed whole only where a number has 19 digits or more (orjson's float)
            assert re.search(rb"[\[:,]\s*-?[0-9]{19}", whole), whole
        assert streamed == manifest.load(backup.path) == orjson.loads(whole)
    body = written.to_json()
    assert manifest.checksum(body) == hashlib.sha256(manifest.canonical_bytes(body)).hexdigest()
    assert orjson.loads(whole)["tables"] == [t.to_json() for t in tables]


@pytest.mark.parametrize("where", ["table name", "setting", "both"])
def test_manifest_holding_the_checksums_placeholder_is_still_checked_whole(
    tmp_path: Path, where: str
) -> None:
    """A manifest is untrusted input: one that spells the placeholder the reader's
    table-by-table checksum splices at (no PostgreSQL name can) is hashed whole, so it
    is accepted exactly when intact."""
    placeholder = "\x00tables\x00"
    table = manifest.BackupTable(
        schema="s",
        name=placeholder if where != "setting" else "t",
        kind="table",
        parent=None,
        rows=0,
        columns=(),
        files=(),
    )
    settings = {"x": placeholder} if where != "table name" else {}
    written = manifest.Manifest(
        format_version=manifest.FORMAT_VERSION,
        compression="zstd",
        settings=settings,
        tables=(table,),
        sequences=(),
    )
    raw = manifest.serialize(written.to_json())
    whole = hashlib.sha256(manifest.canonical_bytes(written.to_json())).hexdigest()
    assert manifest.load_bytes(raw, "m")[manifest.CHECKSUM_KEY] == whole
    with pytest.raises(VerificationFailed, match="does not match its own checksum"):
        manifest.load_bytes(raw.replace(b'"rows": 0', b'"rows": 1'), "m")
