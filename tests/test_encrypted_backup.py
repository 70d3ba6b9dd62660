"""Encrypted backups (dump --encrypt-to, verify/restore --identity): a host with the public
key writes backups it cannot read; integrity is checkable without the key; restore needs
it; age's own CLI reads the files."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import zstandard
from pyrage import x25519

from asyncsnap.errors import ExitCode
from asyncsnap.storage.files import BackupDirectory

from .conftest import Database, Postgres, fresh_database, run_cli
from .helpers import failed_with, flip_bit_mid_file, manifest_of
from .test_dump import SHOP

AGE_MAGIC = b"age-encryption.org/v1\n"


@pytest.fixture
def encrypted(db: Database, tmp_path: Path) -> tuple[Path, Path, str]:
    """A dump of the shop database encrypted to a fresh key: (backup, key file, public)."""
    db.execute(SHOP)
    identity = x25519.Identity.generate()
    key = tmp_path / "key.txt"
    key.write_text(f"{identity}\n")
    public = str(identity.to_public())
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b", "--encrypt-to", public)
    assert run.returncode == 0, run.stderr
    return tmp_path / "b", key, public


def test_every_file_is_encrypted_and_the_manifest_says_to_whom(
    encrypted: tuple[Path, Path, str],
) -> None:
    backup, _, public = encrypted
    body = manifest_of(backup)
    assert body["format_version"] == 4
    assert body["encryption"] == {"method": "age", "recipients": [public]}
    stored = [*(backup / "data").iterdir(), *(backup / "schema").iterdir()]
    assert len(stored) >= 6  # four tables and the two schema files
    for path in stored:
        raw = path.read_bytes()
        assert raw.startswith(AGE_MAGIC), path
        assert b"CREATE TABLE" not in raw and b'"name":"c1"' not in raw
    summary = json.loads(run_cli("inspect", str(backup), "--json").stdout)
    assert summary["encrypted_to"] == [public]  # inspect needs no key
    # sha256sum -c works without the key: SHA256SUMS is of the stored bytes
    for line in (backup / "SHA256SUMS").read_text().splitlines():
        digest, relpath = line.split("  ", 1)
        assert hashlib.sha256((backup / relpath).read_bytes()).hexdigest() == digest


def test_verify_without_the_key_checks_integrity_and_with_it_every_line(
    encrypted: tuple[Path, Path, str],
) -> None:
    backup, key, _ = encrypted
    run = run_cli("verify", str(backup))
    assert run.returncode == 0, run.stderr
    assert "match their sha256 and size" in run.stdout and "no line was read" in run.stdout
    run = run_cli("verify", str(backup), "--identity", str(key))
    assert run.returncode == 0, run.stderr
    assert "2070 rows" in run.stdout
    other = key.with_name("other.txt")
    other.write_text(f"{x25519.Identity.generate()}\n")
    run = run_cli("verify", str(backup), "-i", str(other))
    # one error line per problem (verify's help): each file the key was needed for
    assert (run.returncode, run.stdout) == (ExitCode.VERIFY, ""), run.stderr
    *errors, hint = run.stderr.splitlines()
    data = sorted(f"data/{p.name}" for p in (backup / "data").iterdir())
    # schema.sql too: it was never decrypted, and the archive only in its first chunk
    assert [e.split(": does not decrypt: ")[0] for e in errors] == [
        "error: schema/schema.sql",
        "error: schema/schema.pgdump",
        *(f"error: {name}" for name in data),
    ], run.stderr
    assert hint == f"hint: {len(errors)} problems; do not restore from this backup"


def test_restore_needs_the_key_and_then_gives_the_rows_back(
    encrypted: tuple[Path, Path, str], postgres: Postgres
) -> None:
    backup, key, _ = encrypted
    with fresh_database(postgres, "asyncsnap_enc") as target:
        run = run_cli("restore", str(backup), target.dsn)
        failed_with(
            run, ExitCode.USAGE, f"{backup} is encrypted", "give the matching secret key file"
        )
        run = run_cli("restore", str(backup), target.dsn, "-i", str(key), "-q")
        assert run.returncode == 0, run.stderr
        assert target.fetchval("SELECT count(*) FROM order_lines") == 1500
        assert target.fetchval("SELECT count(*) FROM audit.log") == 20


def test_a_changed_byte_is_refused_with_or_without_the_key(
    encrypted: tuple[Path, Path, str], postgres: Postgres
) -> None:
    backup, key, _ = encrypted
    [orders] = (backup / "data").glob("public.orders-*")
    flip_bit_mid_file(orders)
    name = f"data/{orders.name}"
    problem = "1 problem; do not restore from this backup"
    failed_with(
        run_cli("verify", str(backup)),
        ExitCode.VERIFY,
        f"{name}: does not match its SHA-256 in the manifest",
        problem,
    )
    # With the right key, a changed file is damaged, as a plain one is (it said "does not
    # decrypt", with a hint to check --identity).
    failed_with(
        run_cli("verify", str(backup), "-i", str(key)),
        ExitCode.VERIFY,
        f"{name}: does not match its SHA-256 in the manifest",
        problem,
    )
    with fresh_database(postgres, "asyncsnap_enc") as target:
        run = run_cli("restore", str(backup), target.dsn, "-i", str(key))
        failed_with(
            run,
            ExitCode.VERIFY,
            f"{name} does not match its SHA-256 in the manifest",
            "the backup is damaged",
        )
        assert target.fetchval("SELECT count(*) FROM orders") == 0


@pytest.mark.skipif(shutil.which("age") is None, reason="age's CLI is not installed")
def test_ages_cli_opens_a_dumped_file(encrypted: tuple[Path, Path, str]) -> None:
    """`age -d -i key.txt FILE | zstd -dc | jq` (CI installs Debian's age)."""
    backup, key, _ = encrypted
    [customers] = (backup / "data").glob("public.customers-*")
    run = subprocess.run(["age", "-d", "-i", str(key), str(customers)], capture_output=True)
    assert run.returncode == 0, run.stderr
    lines = zstandard.ZstdDecompressor().decompressobj().decompress(run.stdout).splitlines()
    assert len(lines) == 50 and json.loads(lines[0])["name"] == "c1"


def test_pg_dumps_plaintext_never_sits_in_an_encrypted_backup(tmp_path: Path) -> None:
    """pg_dump writes the schema archive in the clear before it is encrypted: for an
    encrypted backup that happens in a private directory outside the backup (a crash
    would otherwise leave the plaintext schema in ``<name>.partial``), removed after."""
    recipient = x25519.Identity.generate().to_public()
    plain = BackupDirectory.create(tmp_path, "plain")
    assert plain.scratch_directory() == plain.path / "schema"
    sealed = BackupDirectory.create(tmp_path, "sealed", [recipient])
    scratch = sealed.scratch_directory()
    assert (sealed.path / "schema").is_dir()  # where the encrypted files go
    assert not scratch.is_relative_to(tmp_path) and oct(scratch.stat().st_mode)[-3:] == "700"
    (scratch / ".capture.tmp").write_bytes(b"PGDMP")
    sealed.abandon(keep_partial=True)
    assert not scratch.exists() and sealed.path.is_dir()


def test_dump_verify_of_an_encrypted_backup_says_what_it_checked(
    db: Database, tmp_path: Path
) -> None:
    """dump --verify with --encrypt-to has no key: it reads back the stored bytes, and says
    so; it said "verified 6 files, 0 rows", as if the tables were empty."""
    db.execute(SHOP)
    public = str(x25519.Identity.generate().to_public())
    run = run_cli(
        "dump", db.dsn, "-o", str(tmp_path), "--name", "b", "--encrypt-to", public, "--verify"
    )
    assert run.returncode == 0, run.stderr
    said = [ln for ln in run.stderr.splitlines() if "verified" in ln]
    assert len(said) == 1 and "0 rows" not in said[0], run.stderr
    assert re.search(
        r"verified the stored bytes of \d+ files \(size and SHA-256; encrypted:", said[0]
    )


def test_diff_convert_and_read_arrow_of_encrypted_backups(db: Database, tmp_path: Path) -> None:
    """The analysis readers decrypt through the same reader as restore: diff's counts,
    convert's and read_arrow's rows; without the key, one usage error."""
    pytest.importorskip("duckdb", reason="the analysis extra (DuckDB)")
    import pyarrow.parquet as pq

    from asyncsnap.analysis.diff import diff
    from asyncsnap.analysis.readers import convert, read_arrow

    db.execute(
        "CREATE TABLE acc (aid int PRIMARY KEY, n numeric(12,2), note text);"
        "INSERT INTO acc SELECT g, g / 3.0, repeat('x', g % 7) FROM generate_series(1, 500) g"
    )
    identity = x25519.Identity.generate()
    key = tmp_path / "key.txt"
    key.write_text(f"{identity}\n")
    public = str(identity.to_public())
    for name in ("before", "after"):
        if name == "after":
            db.execute(
                "UPDATE acc SET n = n + 1 WHERE aid % 50 = 0; DELETE FROM acc WHERE aid = 7;"
                "INSERT INTO acc VALUES (1000, 1.5, 'new')"
            )
        run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", name, "--encrypt-to", public)
        assert run.returncode == 0, run.stderr
    before, after = tmp_path / "before", tmp_path / "after"
    run = run_cli("diff", str(before), str(after))
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert run.stderr.splitlines()[1] == "hint: give the matching secret key file with --identity"
    ids = [identity]
    (table,) = diff(before, after, identities=ids).tables
    assert (table.added, table.removed, table.changed) == (1, 1, 10)
    converted = convert(after, tmp_path / "parquet", identities=ids)
    rows = pq.read_table(tmp_path / "parquet" / converted.tables[0].path).to_pylist()
    expected = db.fetch("SELECT aid, n, note FROM acc")
    assert sorted((r["aid"], r["n"], r["note"]) for r in rows) == sorted(
        (r["aid"], r["n"], r["note"]) for r in expected
    )
    assert read_arrow(after, "public.acc", identities=ids).num_rows == len(expected)


def test_compare_of_an_encrypted_backup_with_a_database(
    encrypted: tuple[Path, Path, str], db: Database
) -> None:
    """compare decrypts through the checked reader: with the key, the database it was
    dumped from is equal (exit 0, one `equal:` line); after one row of orders changed,
    exit 7 with one error line naming public.orders. Without the key (and no fingerprints
    in the manifest), a usage error (exit 2) that says the files must be read."""
    backup, key, _ = encrypted
    same = run_cli("compare", str(backup), db.dsn, "-i", str(key))
    assert (same.returncode, same.stderr) == (0, ""), same.stderr
    (line,) = same.stdout.splitlines()
    assert re.fullmatch(
        r"equal: the database holds exactly the backup's rows \(4 tables, 2070 rows, "
        r"3 sequences; fingerprints from the files; \d+\.\d\ds\)",
        line,
    ), line

    failed_with(
        run_cli("compare", str(backup), db.dsn),
        ExitCode.USAGE,
        f"{backup} has no fingerprints in its manifest (dumped without --fingerprints) and "
        "is encrypted: its files must be read",
        "give the matching secret key file with --identity",
    )

    db.execute("UPDATE orders SET total = total + 1 WHERE id = 7")
    run = run_cli("compare", str(backup), db.dsn, "-i", str(key))
    assert (run.returncode, run.stdout) == (ExitCode.DIFFERENT, ""), run.stderr
    error, hint = run.stderr.splitlines()
    assert error.startswith(
        "error: public.orders: the same number of rows (500) but not the same rows (fingerprint "
    ), error
    assert hint == "hint: 1 difference: the database does not hold exactly the backup's rows"
