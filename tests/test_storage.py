"""Data files: compression, hashing, counting, atomic rename, cleanup (real files)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from pathlib import Path

import pytest
import zstandard
from pyrage import x25519

from asyncsnap.errors import OutputExists, UsageError
from asyncsnap.storage.files import SMALL_FILE, BackupDirectory
from asyncsnap.storage.store import write_file_atomic

LINES = [f'{{"id":{i},"v":"{"x" * (i % 50)}"}}\n'.encode() for i in range(20000)]
DATA = b"".join(LINES)


def decode(kind: str, raw: bytes) -> bytes:
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    if kind == "gzip":
        return gzip.decompress(raw)
    return raw


@pytest.mark.parametrize("kind", ["zstd", "gzip", "none"])
def test_writer_round_trip_counts_and_hash(tmp_path: Path, kind: str) -> None:
    backup = BackupDirectory.create(tmp_path, "b")
    writer = backup.data_writer("public.t-0123456789ab", kind)  # type: ignore[arg-type]
    # Uneven pieces: lines cross write() calls, as COPY buffers do.
    for start in range(0, len(DATA), 7777):
        writer.write(DATA[start : start + 7777])
    writer.close_data()
    assert not writer.final_path.exists() and writer.temp_path.exists()
    stored = writer.finish()
    raw = (backup.path / stored.path).read_bytes()
    assert not writer.temp_path.exists()
    assert decode(kind, raw) == DATA
    assert stored.rows == len(LINES) and stored.bytes == len(DATA)
    assert stored.stored_bytes == len(raw) and stored.sha256 == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("kind", ["zstd", "gzip", "none"])
@pytest.mark.parametrize("size", [0, 1, SMALL_FILE - 1, SMALL_FILE, SMALL_FILE + 1, 3 * SMALL_FILE])
def test_a_small_file_compressed_whole_and_one_that_outgrows_it_read_back(
    tmp_path: Path, kind: str, size: int
) -> None:
    """A file that stays under SMALL_FILE is compressed in one call at its end (by its
    thread's compressor, shared by the files that thread writes); one that outgrows it
    goes on streamed from what was kept. Either reads back as written, with the zstd
    and gzip tools' own readers too."""
    data = DATA[:size]
    backup = BackupDirectory.create(tmp_path, "b")
    for name in ("public.t-0123456789ab", "public.u-0123456789ab"):  # the compressor reused
        writer = backup.data_writer(name, kind)  # type: ignore[arg-type]
        for start in range(0, len(data), 5000):
            writer.write(data[start : start + 5000])
        writer.close_data()
        stored = writer.finish()
        raw = (backup.path / stored.path).read_bytes()
        assert decode(kind, raw) == data
        if kind == "zstd":
            assert zstandard.ZstdDecompressor().decompress(raw, max_output_size=1 << 20) == data
        assert stored.rows == data.count(b"\n") and stored.sha256 == hashlib.sha256(raw).hexdigest()


def test_discard_removes_partial_file(tmp_path: Path) -> None:
    backup = BackupDirectory.create(tmp_path, "b")
    writer = backup.data_writer("x-000000000000", "zstd")
    writer.write(DATA)
    writer.discard()
    writer.discard()  # twice is fine
    assert list((backup.path / "data").iterdir()) == []


def test_a_cheap_writer_touches_no_disk_before_its_first_flush(tmp_path: Path) -> None:
    """The dump makes a small table's writer and converts its rows on the event loop
    (``cheap_writers``): neither may create a file or a folder, or write one; the
    seal's thread does it all. An encrypted backup's writers are not cheap (age's
    thread)."""
    backup = BackupDirectory.create(tmp_path, "b")
    assert backup.cheap_writers
    before = sorted(p.relative_to(backup.path) for p in backup.path.rglob("*"))
    writer = backup.data_writer("public.t-0123456789ab", "zstd")
    writer.write(LINES[0] * 100)  # under the write buffer
    assert sorted(p.relative_to(backup.path) for p in backup.path.rglob("*")) == before
    writer.close_data()
    assert writer.temp_path.exists()
    stored = writer.finish()
    assert decode("zstd", (backup.path / stored.path).read_bytes()) == LINES[0] * 100
    recipient = x25519.Identity.generate().to_public()
    assert not BackupDirectory.create(tmp_path, "e", recipients=[recipient]).cheap_writers


def test_discarding_a_writer_that_wrote_nothing_removes_nothing(tmp_path: Path) -> None:
    """A writer discarded before it touched the disk never made a file: whatever is at
    its names is not its to remove."""
    backup = BackupDirectory.create(tmp_path, "b")
    writer = backup.data_writer("x-000000000000", "zstd")
    writer.final_path.parent.mkdir(parents=True, exist_ok=True)
    writer.final_path.write_bytes(b"not the writer's")
    writer.discard()
    assert writer.final_path.read_bytes() == b"not the writer's"


def test_directory_lifecycle(tmp_path: Path) -> None:
    backup = BackupDirectory.create(tmp_path / "new" / "dir", "b")
    assert backup.path.name == "b.partial" and backup.path.is_dir()
    with pytest.raises(OutputExists):
        BackupDirectory.create(tmp_path / "new" / "dir", "b")  # .partial taken
    write_file_atomic(backup.path, "manifest.json", b"{}")
    final = backup.commit()
    assert final == tmp_path / "new" / "dir" / "b" and not backup.path.exists()
    assert (final / "manifest.json").read_bytes() == b"{}"
    with pytest.raises(OutputExists):
        BackupDirectory.create(tmp_path / "new" / "dir", "b")  # final name taken
    other = BackupDirectory.create(tmp_path, "c")
    other.remove()
    assert not other.path.exists()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x.partial", "a\x00b", "n" * 300])
def test_invalid_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError):
        BackupDirectory.create(tmp_path, name)
    assert os.listdir(tmp_path) == []
