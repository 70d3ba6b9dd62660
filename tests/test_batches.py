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
