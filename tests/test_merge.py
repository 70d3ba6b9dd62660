"""diff's merge of two sides read in order (``analysis.merge``), without a server: what it
leaves is exactly the multiset difference of the two sides' lines, whatever the order,
the repeats and the blocks they come in; and it gives up (``TooFarApart``) rather than
hold more than its bound."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncsnap import _rows
from asyncsnap.analysis import merge
from asyncsnap.errors import VerificationFailed
from asyncsnap.format import BackupFile


def side(directory: Path, name: str, lines: list[bytes], pieces: int = 1) -> list[BackupFile]:
    """``lines`` as ``pieces`` plain files (a table split in page ranges)."""
    files = []
    cut = max(1, len(lines) // pieces)
    for i, start in enumerate(range(0, max(len(lines), 1), cut)):
        part = lines[start : start + cut] if i < pieces - 1 else lines[start:]
        path = directory / f"{name}-{i}.ndjson"
        path.write_bytes(b"".join(part))
        files.append(BackupFile(str(path), len(part), 0, 0, "0" * 64))
        if i == pieces - 1:
            break
    return files


def expected(before: list[bytes], after: list[bytes]) -> tuple[Counter[bytes], Counter[bytes]]:
    a, b = Counter(before), Counter(after)
    return a - b, b - a


def test_equal_lines_counts_only_whole_lines_both_sides_begin_with() -> None:
    assert _rows.equal_lines(b"a\nb\nc\n", 0, b"a\nb\nd\n", 0) == 4
    assert _rows.equal_lines(b"ab\nc\n", 0, b"a\nbc\n", 0) == 0  # same bytes, other lines
    assert _rows.equal_lines(b"x\ny\n", 2, b"y\n", 0) == 2
    assert _rows.equal_lines(b"a\n" * 100_000, 0, b"a\n" * 99_999 + b"b\n", 0) == 199_998
    assert _rows.equal_lines(b"a\nb", 0, b"a\nb", 0) == 2  # no newline: not a whole line
    with pytest.raises(ValueError, match="outside"):
        _rows.equal_lines(b"a\n", 3, b"a\n", 0)


LINE = st.sampled_from([b'{"k":1}\n', b'{"k":2}\n', b'{"k":3}\n', b"{}\n", b'{"k":"x"}\n'])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.lists(
        st.one_of(LINE, st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"") + b"\n")),
        max_size=60,
    ),
    edits=st.lists(
        st.tuples(st.sampled_from(["delete", "insert", "move", "swap"]), st.integers(0, 59), LINE),
        max_size=12,
    ),
    pieces=st.tuples(st.integers(1, 4), st.integers(1, 4)),
)
def test_what_is_left_is_the_multiset_difference(
    tmp_path_factory: pytest.TempPathFactory,
    before: list[bytes],
    edits: list[tuple[str, int, bytes]],
    pieces: tuple[int, int],
) -> None:
    """Random sides, the second made from the first by deletes, inserts, moves and swaps
    (what an update does to a heap's order), read from several files each in blocks of
    any size: removed and added are ``Counter`` differences, repeats counted."""
    after = list(before)
    for op, at, line in edits:
        i = at % (len(after) + 1)
        if op == "insert":
            after.insert(i, line)
        elif after and op == "delete":
            del after[i % len(after)]
        elif after and op == "move":
            after.append(after.pop(i % len(after)))
        elif len(after) > 1:
            j = (i + 1) % len(after)
            after[i % len(after)], after[j] = after[j], after[i % len(after)]
    directory = tmp_path_factory.mktemp("merge")
    old = side(directory, "a", before, pieces[0])
    new = side(directory, "b", after, pieces[1])
    found = merge.differing_lines(None, old, None, new)
    removed, added = expected(before, after)
    assert Counter(found.removed) == removed and Counter(found.added) == added
    assert (found.rows_before, found.rows_after) == (len(before), len(after))


def test_small_blocks_and_a_side_that_ends_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of a few bytes (a line across reads), one side ending long before the
    other: the lines after the end cancel or are set aside one by one."""
    monkeypatch.setattr(merge, "_BLOCK", 7)
    before = [f'{{"k":{i}}}\n'.encode() for i in range(200)]
    after = [*before[:50], b'{"k":"new"}\n', *before[60:], *before[50:55], *before[:3]]
    found = merge.differing_lines(
        None, side(tmp_path, "a", before), None, side(tmp_path, "b", after)
    )
    removed, added = expected(before, after)
    assert Counter(found.removed) == removed and Counter(found.added) == added


def test_far_apart_sides_give_up_instead_of_holding_everything(tmp_path: Path) -> None:
    """A table read in reverse order: every line is set aside until the bound; the caller
    then groups the lines out of core."""
    before = [f'{{"k":{i},"v":"{"x" * 50}"}}\n'.encode() for i in range(5000)]
    old, new = side(tmp_path, "a", before), side(tmp_path, "b", before[::-1])
    with pytest.raises(merge.TooFarApart, match="bytes of lines set aside"):
        merge.differing_lines(None, old, None, new, limit_bytes=64 << 10)
    found = merge.differing_lines(None, old, None, new, limit_bytes=64 << 20)
    assert not found.removed and not found.added


def test_a_file_with_fewer_lines_than_its_entry_is_refused(tmp_path: Path) -> None:
    lines = [b'{"k":1}\n', b'{"k":2}\n']
    old = side(tmp_path, "a", lines)
    new = [BackupFile(side(tmp_path, "b", lines)[0].path, 3, 0, 0, "0" * 64)]
    with pytest.raises(VerificationFailed, match="2 lines, not 3"):
        merge.differing_lines(None, old, None, new)


def test_many_changes_give_up_after_a_tenth_not_at_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quarter of the rows updated (each moved to the end with a new value): the lines
    set aside grow at a steady rate, and the merge gives up once a tenth of the lines
    project past the bound, instead of reading on until it passes it."""
    monkeypatch.setattr(merge, "_BLOCK", 4096)
    monkeypatch.setattr(merge, "PROJECT_AFTER_LINES", 1000)
    before = [f'{{"k":{i},"v":"{"x" * 40}"}}\n'.encode() for i in range(20_000)]
    kept = [line for i, line in enumerate(before) if i % 4]
    changed = [line.replace(b"x", b"y") for i, line in enumerate(before) if not i % 4]
    old, new = side(tmp_path, "a", before), side(tmp_path, "b", kept + changed)
    with pytest.raises(merge.TooFarApart, match=r"after \d+ of 40000 lines"):
        merge.differing_lines(None, old, None, new, limit_bytes=600_000)
    found = merge.differing_lines(None, old, None, new, limit_bytes=64 << 20)
    assert len(found.removed) == len(found.added) == 5000
