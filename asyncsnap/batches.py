"""Work cut into batches: a round trip, a statement or a transaction per batch of tables
instead of one per table (ten thousand small tables)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of ``size``, the last one shorter if need be; none
    for no items. (``itertools.batched`` arrives in Python 3.12, and gives tuples.)

    >>> [list(b) for b in batched([1, 2, 3, 4, 5], 2)]
    [[1, 2], [3, 4], [5]]
    """
    if size < 1:
        raise ValueError(f"a batch holds at least one item, not {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]
