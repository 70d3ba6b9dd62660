"""The long-line store of the analysis readers, without a server."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

from asyncsnap import _rows
from asyncsnap.analysis.batches import LongLines


def _lines(seed: int, count: int, size: int) -> bytes:
    """``count`` distinct JSON lines of ``size`` bytes or more, the ``seed``-th set."""
    return b"".join(
        b'["' + (f"{seed}-{n}-".encode() * (size // 8 + 1))[:size] + b'"]\n' for n in range(count)
    )


def test_two_readers_store_long_lines_at_once(tmp_path: Path) -> None:
    """diff reads both backups in two threads into one store: both created the store's
    file at once (FileExistsError in CI) and could record an offset where the other
    thread's line went. Two threads, each with its own long lines and some in common:
    every line comes back byte for byte."""
    store = LongLines(tmp_path, lambda text, start, end: b'["stand-in"]', limit=1000)
    common = _lines(99, 4, 300_000)
    data = [_lines(seed, 40, 200_000) + common for seed in (1, 2)]
    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def store_all(block: bytes) -> None:
        _, hi, lo, _, offsets, text, _, _ = _rows.line_columns(block, True, True)
        assert hi is not None and lo is not None and offsets is not None and text is not None
        start.wait()
        try:
            store.take(offsets, text, hi, lo)
        except BaseException as error:  # reported below, with the thread's work
            failures.append(error)

    threads = [threading.Thread(target=store_all, args=(block,)) for block in data]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    expected = {line for block in data for line in block.split(b"\n") if line}
    assert len(expected) == 84
    for line in expected:
        digest = hashlib.sha256(line).digest()
        identity = (int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:16], "big"))
        out = io.BytesIO()
        store.copy_to(identity, out)
        assert out.getvalue() == line
    store.close()


def test_the_second_pass_hashes_only_the_lines_the_first_recorded_as_wanted(
    tmp_path: Path,
) -> None:
    """diff's first pass records each line's identity's first half, in order; its second
    pass, given that record and the wanted halves, passes over the lines whose recorded
    half is not wanted (unhashed) and checks the rest against their own hash: with the
    true record it gives exactly the wanted lines, with a record that no longer says a
    line is wanted it gives that line no more, and a record that ran out fails."""
    import struct

    import pytest

    from asyncsnap.analysis.batches import LineBatches
    from asyncsnap.errors import VerificationFailed
    from asyncsnap.format import BackupFile

    data = _lines(7, 3000, 60)
    path = tmp_path / "t.ndjson"
    path.write_bytes(data)
    entry = BackupFile(
        path=str(path), rows=3000, bytes=len(data), stored_bytes=len(data), sha256=""
    )
    lines = data.split(b"\n")[:-1]
    firsts = [int.from_bytes(hashlib.sha256(line).digest()[:8], "big") for line in lines]

    record = io.BytesIO()
    first = LineBatches(None, [entry], hashes=True, text=False, block_size=4096,
                        record_firsts=record)  # fmt: skip
    assert sum(batch.num_rows for batch in first) == 3000
    assert struct.unpack("=3000Q", record.getvalue()) == tuple(firsts)

    wanted_lines = (5, 1234, 2999)
    wanted = struct.pack("=3Q", *sorted(firsts[i] for i in wanted_lines))

    def second(known: bytes) -> list[bytes]:
        batches = LineBatches(None, [entry], wanted=wanted, block_size=4096,
                              firsts=io.BytesIO(known))  # fmt: skip
        return [line.encode() for b in batches for line in b.column("line").to_pylist()]

    assert second(record.getvalue()) == [lines[i] for i in wanted_lines]
    altered = bytearray(record.getvalue())
    altered[1234 * 8 : 1235 * 8] = struct.pack("=Q", firsts[1233])
    assert second(bytes(altered)) == [lines[5], lines[2999]]
    with pytest.raises(VerificationFailed, match="more lines than the first reading found"):
        second(record.getvalue()[:-8])
