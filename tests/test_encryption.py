"""age encryption of data files (not yet offered by a command: the stage the dump's
writer and the readers will use). Decryptable by age's own CLI; a wrong key or a changed
byte is refused; failures on either side of the pipe end the other without a hang."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard
from pyrage import x25519

from asyncsnap.errors import DiskFull, UsageError, VerificationFailed
from asyncsnap.format import Backup, BackupFile, Manifest
from asyncsnap.storage.backup import DataFileReader, LocalSource
from asyncsnap.storage.encryption import decrypted, load_identities, parse_recipients
from asyncsnap.storage.files import DataFileWriter
from asyncsnap.storage.store import LocalFileSink

LINES = b"".join(b'{"id":%d,"name":"patient %d"}\n' % (i, i) for i in range(100_000))


def keypair(tmp_path: Path) -> tuple[x25519.Identity, Path]:
    identity = x25519.Identity.generate()
    key = tmp_path / "key.txt"
    key.write_text(f"# created for a test\n{identity}\n")
    return identity, key


def encrypted_file(tmp_path: Path, recipient: x25519.Recipient) -> tuple[Path, str]:
    writer = DataFileWriter(tmp_path, "public.t.ndjson.zst", "zstd", recipients=[recipient])
    for start in range(0, len(LINES), 100_003):
        writer.write(LINES[start : start + 100_003])
    writer.close_data()
    stored = writer.finish()
    path = tmp_path / stored.path
    assert stored.rows == 100_000 and stored.stored_bytes == path.stat().st_size
    return path, stored.sha256


def plaintext(path: Path, identities: list[x25519.Identity]) -> bytes:
    with path.open("rb") as source:
        compressed = b"".join(decrypted(source, identities, where=str(path)))
    return zstandard.ZstdDecompressor().decompressobj().decompress(compressed)


def test_an_encrypted_file_is_age_and_its_hash_is_of_the_stored_bytes(tmp_path: Path) -> None:
    identity, _ = keypair(tmp_path)
    path, sha256 = encrypted_file(tmp_path, identity.to_public())
    stored = path.read_bytes()
    assert stored.startswith(b"age-encryption.org/v1\n")
    assert sha256 == hashlib.sha256(stored).hexdigest()  # checkable without the key
    assert b"patient" not in stored
    assert plaintext(path, [identity]) == LINES


@pytest.mark.skipif(shutil.which("age") is None, reason="age's CLI is not installed")
def test_ages_own_cli_decrypts_a_data_file(tmp_path: Path) -> None:
    """`age -d -i key.txt FILE | zstd -dc` reads our files (CI installs Debian's age)."""
    identity, key = keypair(tmp_path)
    path, _ = encrypted_file(tmp_path, identity.to_public())
    run = subprocess.run(["age", "-d", "-i", str(key), str(path)], capture_output=True, check=True)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(run.stdout) == LINES


def test_a_wrong_key_or_a_changed_byte_is_refused(tmp_path: Path) -> None:
    identity, _ = keypair(tmp_path)
    path, _ = encrypted_file(tmp_path, identity.to_public())
    with pytest.raises(VerificationFailed, match="does not decrypt"):
        plaintext(path, [x25519.Identity.generate()])
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # in a 64 KiB chunk: its tag no longer matches
    path.write_bytes(bytes(raw))
    with pytest.raises(VerificationFailed, match="does not decrypt"):
        plaintext(path, [identity])
    path.write_bytes(bytes(raw[: len(raw) // 2]))  # cut: no final chunk
    with pytest.raises(VerificationFailed, match="does not decrypt"):
        plaintext(path, [identity])


def test_a_discarded_encrypted_file_leaves_nothing(tmp_path: Path) -> None:
    identity, _ = keypair(tmp_path)
    threads = threading.active_count()
    writer = DataFileWriter(tmp_path, "x.ndjson", "none", recipients=[identity.to_public()])
    writer.write(LINES)
    writer.discard()
    writer.discard()
    assert list(tmp_path.glob("*x.ndjson*")) == [] and threading.active_count() == threads


class _FillsUp(LocalFileSink):
    """A disk that is full after 1 MiB."""

    def write(self, block: bytes) -> None:
        written = self.final_path.with_name(self.temp_path.name)  # made by the first write
        if written.exists() and written.stat().st_size > 1 << 20:
            raise DiskFull("no space left on device", hint="free space")
        super().write(block)


def test_a_failing_sink_ends_the_stream_with_its_own_error(tmp_path: Path) -> None:
    """The sink fails in the encryption thread: the writer gets DiskFull (not pyrage's
    wrapping of it) and nothing waits forever on the pipe."""
    identity, _ = keypair(tmp_path)
    sink = _FillsUp(tmp_path / "x.ndjson")
    writer = DataFileWriter(
        tmp_path, "x.ndjson", "none", sink=sink, recipients=[identity.to_public()]
    )
    with pytest.raises(DiskFull):
        for _ in range(40):  # 40 x 2.7 MB, far past the full disk and the pipe's buffer
            writer.write(LINES)
        writer.close_data()
        writer.finish()
    writer.discard()
    assert not (tmp_path / "x.ndjson").exists()


def test_recipients_and_identities_are_read_strictly(tmp_path: Path) -> None:
    identity, key = keypair(tmp_path)
    public = str(identity.to_public())
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(f"# the backup host's key\n{public}\n\n")
    assert len(parse_recipients([public, str(recipients)])) == 2
    assert len(load_identities(key)) == 1
    with pytest.raises(UsageError, match="neither an age public key"):
        parse_recipients(["ops@example.com"])
    recipients.write_text("age1notakey\n")
    with pytest.raises(UsageError, match=r"recipients\.txt, line 1"):
        parse_recipients([str(recipients)])
    secret = str(identity)
    key.write_text(secret[:-3] + "\n")  # a damaged secret key
    with pytest.raises(UsageError) as caught:
        load_identities(key)
    assert secret[20:40] not in f"{caught.value.message} {caught.value.hint}"
    # raised "from None": a traceback (--debug) does not show pyrage's error with the line
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_decrypting_from_a_stream_that_is_not_a_file(tmp_path: Path) -> None:
    """Readers of an object store hand the decrypter a buffered stream, not a file."""
    identity, _ = keypair(tmp_path)
    path, _ = encrypted_file(tmp_path, identity.to_public())
    source = io.BufferedReader(io.BytesIO(path.read_bytes()))
    compressed = b"".join(decrypted(source, [identity], where="memory"))
    assert zstandard.ZstdDecompressor().decompressobj().decompress(compressed) == LINES


def _backup_of(root: Path, path: Path, sha256: str, recipient: str) -> tuple[Backup, BackupFile]:
    entry = BackupFile(
        path=path.name,
        rows=100_000,
        bytes=len(LINES),
        stored_bytes=path.stat().st_size,
        sha256=sha256,
    )
    backup = Backup(
        path=root,
        source=LocalSource(root),
        manifest=Manifest(
            format_version=4,
            compression="zstd",
            settings={},
            tables=(),
            sequences=(),
            encryption=(recipient,),
        ),
    )
    return backup, entry


def test_the_reader_hashes_as_stored_then_decrypts_and_checks_lines(tmp_path: Path) -> None:
    """What verify and restore will use: the sha256 of the stored (encrypted) bytes, the
    rows of the plaintext; without the key the file cannot be read at all."""
    identity, _ = keypair(tmp_path)
    path, sha256 = encrypted_file(tmp_path, identity.to_public())
    backup, entry = _backup_of(tmp_path, path, sha256, str(identity.to_public()))
    reader = DataFileReader(backup, entry, identities=[identity])
    assert b"".join(bytes(block) for block in reader) == LINES
    reader.finish()  # size, sha256 and rows all match
    with pytest.raises(UsageError, match="is encrypted and no key was given"):
        read_all(DataFileReader(backup, entry))  # the manifest says encrypted: a key it needs
    # a manifest that says nothing: not decrypted
    unmarked = replace(backup, manifest=replace(backup.manifest, encryption=()))
    with pytest.raises(VerificationFailed, match="cannot be decompressed"):
        read_all(DataFileReader(unmarked, entry, identities=[identity]))
    stopped = DataFileReader(backup, entry, identities=[identity])
    next(iter(stopped))
    stopped.drain()  # an early stop still hashes the whole stored file
    assert not stopped.damaged()
    stopped.close()
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    # a changed file: damaged (its stored bytes say so), not a question of the key
    with pytest.raises(VerificationFailed, match="does not match its SHA-256 in the manifest"):
        read_all(DataFileReader(backup, entry, identities=[identity]))
    other = x25519.Identity.generate()  # the intact file with another key: does not decrypt
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(VerificationFailed, match="does not decrypt"):
        read_all(DataFileReader(backup, entry, identities=[other]))


def read_all(reader: DataFileReader) -> None:
    """Read to the end, as verify does, closing the file whatever happens."""
    try:
        for _ in reader:
            pass
        reader.finish()
    finally:
        reader.close()
