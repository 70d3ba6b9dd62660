"""Big values: a row of ~300 MB goes through dump, verify and restore, in memory bounded by
a small multiple of the row (the bounds the README states), and a line longer than any
row can be is refused as damage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from asyncsnap.backup import MAX_LINE_BYTES, Backup, BackupFile, DataFileReader
from asyncsnap.errors import VerificationFailed

from .conftest import Database, Postgres, clean_env, fresh_database
from .helpers import manifest_of

# Peak RSS of one asyncsnap process, measured by a small Python parent that only waits for
# it (a child of pytest would inherit pytest's high-water mark).
_MEASURE = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
sys.exit(code)
"""
MIB = 1 << 20
# Start-up of the interpreter and our imports, with room to spare.
_BASE = 200 * MIB
# How many times the longest line each command may hold (README, "Big values").
_FACTORS = {"dump": 2.5, "verify": 3.5, "restore": 5.5}

_TABLE = "CREATE TABLE big (id int PRIMARY KEY, txt text, bin bytea)"


def _peak_rss(*args: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, sys.executable, "-m", "asyncsnap", *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_300_mb_row_dumps_verifies_and_restores_in_bounded_memory(
    postgres: Postgres, db: Database, tmp_path: Path
) -> None:
    # 150 MB of text full of characters JSON escapes, and a 40 MB bytea (80 MB of hex).
    db.execute(
        _TABLE + ";"
        "ALTER TABLE big ALTER txt SET STORAGE EXTERNAL;"
        "INSERT INTO big SELECT 1, repeat(E'a\"b\\\\c', 30 * 1024 * 1024),"
        "       decode(repeat('00ff', 20 * 1024 * 1024), 'hex');"
        "INSERT INTO big VALUES (2, 'small', '\\x00');"
    )
    backup = tmp_path / "b"
    rss = {"dump": _peak_rss("dump", db.dsn, "-o", str(tmp_path), "--name", "b", "-q")}
    (entry,) = manifest_of(backup)["tables"]
    line = entry["files"][0]["bytes"]  # two rows, almost all of it the big one
    assert line > 280 * MIB
    rss["verify"] = _peak_rss("verify", str(backup), "-q")
    with fresh_database(postgres, "asyncsnap_target") as target:
        target.execute(_TABLE)
        rss["restore"] = _peak_rss("restore", str(backup), target.dsn, "-q")
        same = target.fetchval("SELECT md5(txt) || md5(bin) FROM big WHERE id = 1") == db.fetchval(
            "SELECT md5(txt) || md5(bin) FROM big WHERE id = 1"
        )
        assert same and target.fetchval("SELECT count(*) FROM big") == 2
    for command, peak in rss.items():
        bound = _BASE + _FACTORS[command] * line
        assert peak < bound, f"{command}: {peak / MIB:.0f} MiB, bound {bound / MIB:.0f} MiB"


def test_a_line_longer_than_any_row_is_refused_as_damage(tmp_path: Path) -> None:
    """The shared reader's bound is the server's: no value exceeds 1 GiB. A file that keeps
    going without a newline is damage, found without holding more than the bound."""
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "x.ndjson"
    path.write_bytes(b'{"a": "' + b"x" * (3 * MIB))
    backup = Backup(
        path=tmp_path,
        manifest={},
        compression="none",
        settings={},
        tables=(),
        sequences=(),
    )
    entry = BackupFile(
        "data/x.ndjson", rows=1, bytes=3 * MIB, stored_bytes=3 * MIB, sha256="0" * 64
    )
    reader = DataFileReader(backup, entry, block_size=MIB, max_line=2 * MIB)
    try:
        with pytest.raises(VerificationFailed, match="a line longer than 2097152 bytes"):
            list(reader)
    finally:
        reader.close()
    assert MAX_LINE_BYTES == 1 << 30
