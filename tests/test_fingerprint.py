"""Row fingerprints (asyncsnap.fingerprint): the native sum against the definition in
docs/format.md, however the lines arrive. No server needed."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncsnap.fingerprint import EMPTY, RowFingerprint, combine, of_lines

LINES = [
    b'{"id":1,"name":"a"}',
    b"{}",
    b'{"id":2,"name":"\\u00e9\\n"}',
    b'{"id":3,"blob":"' + b"x" * 5000 + b'"}',
    b'{"id":1,"name":"a"}',  # a duplicate row counts twice
]


def reference(lines: list[bytes]) -> str:
    """docs/format.md's definition, written out independently of the module."""
    total = 0
    for line in lines:
        total += int.from_bytes(hashlib.sha256(line).digest()[:16], "big")
    return format(total % 2**128, "032x")


def fed(data: bytes, cuts: list[int]) -> RowFingerprint:
    fingerprint = RowFingerprint()
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        fingerprint.update(data[start:cut])
        start = cut
    return fingerprint


def test_native_sum_equals_the_documented_definition() -> None:
    fingerprint = RowFingerprint()
    fingerprint.update(b"".join(line + b"\n" for line in LINES))
    assert fingerprint.rows == len(LINES)
    assert fingerprint.hexdigest() == reference(LINES) == of_lines(LINES)


def test_lines_cut_anywhere_give_the_same_fingerprint() -> None:
    data = b"".join(line + b"\n" for line in LINES)
    rng = random.Random(7)
    for _ in range(200):
        cuts = rng.sample(range(1, len(data)), rng.randint(1, 12))
        fingerprint = fed(data, cuts)
        assert fingerprint.complete
        assert (fingerprint.rows, fingerprint.hexdigest()) == (len(LINES), reference(LINES))
    # a line that arrives one byte at a time (a row written column by column)
    assert fed(data, list(range(1, len(data)))).hexdigest() == reference(LINES)


def test_order_does_not_matter_and_split_files_combine() -> None:
    shuffled = LINES[:]
    random.Random(3).shuffle(shuffled)
    assert of_lines(shuffled) == of_lines(LINES)
    assert combine([of_lines(LINES[:2]), of_lines(LINES[2:]), EMPTY]) == of_lines(LINES)


def test_one_changed_missing_or_extra_row_changes_it() -> None:
    base = of_lines(LINES)
    assert of_lines([*LINES[:-1], b'{"id":1,"name":"b"}']) != base
    assert of_lines(LINES[:-1]) != base
    assert of_lines([*LINES, b"{}"]) != base


def test_an_unended_line_is_not_counted() -> None:
    fingerprint = RowFingerprint()
    fingerprint.update(b'{"a":1}\n{"a":')
    assert fingerprint.rows == 1 and not fingerprint.complete
    assert fingerprint.hexdigest() == reference([b'{"a":1}'])
    assert RowFingerprint().hexdigest() == EMPTY


def test_every_line_length_up_to_200_against_hashlib() -> None:
    """SHA-256's padding takes a second block when a line's length mod 64 is 56 or more:
    every length from 0 to 200 bytes, through the fingerprint's sum and through the
    per-line identities the analysis readers use (``_rows.line_columns``), against
    hashlib."""
    import struct

    from asyncsnap import _rows

    rng = random.Random(11)
    lines = [bytes(rng.randrange(256) for _ in range(n)).replace(b"\n", b" ") for n in range(201)]
    data = b"".join(line + b"\n" for line in lines)
    fingerprint = RowFingerprint()
    fingerprint.update(data)
    assert (fingerprint.rows, fingerprint.hexdigest()) == (len(lines), reference(lines))
    rows, hi, lo, total, _, _, longest, seen = _rows.line_columns(data, True, False)
    assert (rows, seen, longest) == (201, 201, 200)
    assert hi is not None and lo is not None and total is not None
    firsts, seconds = struct.unpack(f"={rows}Q", hi), struct.unpack(f"={rows}Q", lo)
    for line, first, second in zip(lines, firsts, seconds, strict=True):
        digest = hashlib.sha256(line).digest()
        assert (first, second) == (
            int.from_bytes(digest[:8], "big"),
            int.from_bytes(digest[8:16], "big"),
        ), len(line)
    assert f"{int.from_bytes(total, 'big'):032x}" == reference(lines)


_BOTH_PATHS = """
import hashlib, os, random
from asyncsnap import _rows
rng = random.Random(7)
lines = [bytes(rng.randrange(256) for _ in range(n)).replace(b"\\n", b"x")
         for n in [*range(0, 200), 447, 448, 511, 512, 513, 4095, 4096, 100_000] for _ in range(3)]
# and in a shuffled order: lines are hashed two at a time, of any two lengths
lines += rng.sample(lines, len(lines))
data = b"".join(line + b"\\n" for line in lines)
rows, total, end = _rows.line_fingerprint(data)
want = sum(int.from_bytes(hashlib.sha256(line).digest()[:16], "big") for line in lines)
assert (rows, end) == (len(lines), len(data))
assert total == (want % 2**128).to_bytes(16, "big"), _rows.SHA256_PATH
kept = _rows.line_columns(data, True, False)
his, los = memoryview(kept[1]).cast("Q"), memoryview(kept[2]).cast("Q")
for i, line in enumerate(lines):
    d = hashlib.sha256(line).digest()
    assert (his[i], los[i]) == (int.from_bytes(d[:8], "big"), int.from_bytes(d[8:16], "big"))
# two threads at once, as diff's two readers (the GIL is released while hashing)
import threading
other = b"".join(line[::-1] + b"\\n" for line in lines)
want2 = sum(int.from_bytes(hashlib.sha256(line[::-1]).digest()[:16], "big") for line in lines)
expected = {data: (want % 2**128).to_bytes(16, "big"), other: (want2 % 2**128).to_bytes(16, "big")}
start, failures = threading.Barrier(2), []
def hammer(block):
    start.wait()
    try:
        for _ in range(50):
            got = (_rows.line_fingerprint(block)[1], _rows.line_columns(block, True, False)[3])
            if got != (expected[block],) * 2:
                failures.append(len(block))
    except BaseException as error:
        failures.append(error)
threads = [threading.Thread(target=hammer, args=(block,)) for block in (data, other)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
assert not failures, failures
print(_rows.SHA256_PATH)
"""


@pytest.mark.parametrize("forced", [None, "evp"])
def test_each_sha256_path_equals_hashlib(forced: str | None) -> None:
    """The CPU's SHA instructions (where the CPU has them; two lines' blocks interleaved)
    and OpenSSL's EVP each give hashlib's SHA-256 for lines of every length around the
    block and padding edges, next to lines of every other length, also from two threads
    hashing at once."""
    env = {k: v for k, v in os.environ.items() if k != "ASYNCSNAP_SHA256"}
    if forced is not None:
        env["ASYNCSNAP_SHA256"] = forced
    run = subprocess.run(
        [sys.executable, "-c", _BOTH_PATHS], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == (forced or run.stdout.strip())


@settings(max_examples=400, deadline=None, database=None)
@given(
    data=st.one_of(
        st.binary(max_size=700),
        st.lists(st.sampled_from([b"\n", b"x", b"\n\n", b"\xff" * 7, b"y" * 40]), max_size=200).map(
            b"".join
        ),
    ),
    offset=st.integers(min_value=0, max_value=63),
)
def test_count_lines_is_bytes_count(data: bytes, offset: int) -> None:
    """The native newline count (sixteen bytes at a time) is ``bytes.count(b"\\n")`` at
    every length and alignment, newlines dense or sparse."""
    from asyncsnap import _rows

    padded = bytes(offset) + data + b"\n" * (offset % 3)
    view = memoryview(padded)[offset:]
    assert _rows.count_lines(view) == bytes(view).count(b"\n")
    assert _rows.count_lines(b"\n" * (64 * 300 + offset)) == 64 * 300 + offset
