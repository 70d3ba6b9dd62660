"""Pure planning: restore order from the foreign-key graph, chunk order, file names."""

from __future__ import annotations

import itertools
import re

from asyncsnap.catalog import ForeignKey, Table
from asyncsnap.plan import file_stem, plan_chunks, restore_order


def table(
    name: str, *refs: str, size: int = 0, parent: str | None = None, kind: str = "table"
) -> Table:
    fks = tuple(
        ForeignKey(
            name=f"{name}_{r}_fk",
            columns=("x",),
            ref_schema="s",
            ref_table=r,
            ref_columns=("id",),
            deferrable=False,
            initially_deferred=False,
        )
        for r in refs
    )
    return Table(
        oid=abs(hash(name)) % 10**6,
        schema="s",
        name=name,
        kind=kind,  # type: ignore[arg-type]
        parent=("s", parent) if parent else None,
        est_rows=0,
        table_bytes=size,
        readable=True,
        foreign_keys=fks,
    )


def names(levels: list[list[tuple[str, str]]]) -> list[list[str]]:
    return [[n for _, n in level] for level in levels]


def test_chain_loads_parents_first() -> None:
    order = restore_order([table("c", "b"), table("b", "a"), table("a")])
    assert names(order.levels) == [["a"], ["b"], ["c"]]
    assert order.cycles == [] and order.self_referencing == []


def test_diamond_puts_siblings_in_one_level() -> None:
    order = restore_order([table("d", "b", "c"), table("b", "a"), table("c", "a"), table("a")])
    assert names(order.levels) == [["a"], ["b", "c"], ["d"]]


def test_longest_path_decides_the_level() -> None:
    order = restore_order([table("c", "a", "b"), table("b", "a"), table("a")])
    assert names(order.levels) == [["a"], ["b"], ["c"]]


def test_self_reference_is_reported_not_a_cycle() -> None:
    order = restore_order([table("tree", "tree"), table("leaf", "tree")])
    assert names(order.levels) == [["tree"], ["leaf"]]
    assert order.self_referencing == [("s", "tree")]
    assert order.cycles == []


def test_two_table_cycle_is_one_level_and_reported() -> None:
    order = restore_order([table("a", "b"), table("b", "a"), table("c", "a"), table("z")])
    assert names(order.levels) == [["a", "b", "z"], ["c"]]
    assert order.cycles == [[("s", "a"), ("s", "b")]]


def test_references_outside_the_selection_are_ignored() -> None:
    order = restore_order([table("orders", "customers")])
    assert names(order.levels) == [["orders"]]


def test_partitions_follow_their_root_and_parents_hold_no_data() -> None:
    tables = [
        table("m", "dim", kind="partitioned"),
        table("m_1", parent="m", kind="partition"),
        table("m_2", parent="m", kind="partition"),
        table("dim"),
    ]
    order = restore_order(tables)
    assert names(order.levels) == [["dim"], ["m_1", "m_2"]]
    assert [c.table.name for c in plan_chunks(tables)] == ["dim", "m_1", "m_2"]


def test_long_chain_does_not_recurse() -> None:
    tables = [table(f"t{i:05d}", f"t{i - 1:05d}") for i in range(1, 5000)] + [table("t00000")]
    order = restore_order(tables)
    assert len(order.levels) == 5000 and order.levels[0] == [("s", "t00000")]


def test_chunks_largest_first() -> None:
    chunks = plan_chunks([table("small", size=10), table("big", size=10**9), table("mid", size=5)])
    assert [c.table.name for c in chunks] == ["big", "small", "mid"]
    assert all(c.count == 1 and c.label == f"s.{c.table.name}" for c in chunks)


def test_file_stems_are_safe_distinct_and_bounded() -> None:
    hostile = [
        "Users",
        "users",
        "USERS",
        "a/b",
        "..",
        ".",
        "",
        "a b",
        "таблица",
        "😀",
        "x" * 63,
        "x" * 62 + "y",
        'q"uote',
        "con",
        "nul",
        "a\\b",
        "tab\tname",
    ]
    stems = [file_stem("public", n) for n in hostile]
    assert len({s.lower() for s in stems}) == len(hostile)  # even on case-insensitive disks
    for s in stems:
        assert re.fullmatch(r"[a-z0-9_-]+\.[a-z0-9_-]+-[0-9a-f]{12}", s), s
        assert len(s) <= 94
    assert file_stem("public", "Order Items").startswith("public.order_items-")
    assert file_stem("public", "x") == file_stem("public", "x")  # stable across runs


def test_page_ranges_are_contiguous_and_open_ended() -> None:
    from asyncsnap.plan import MAX_CHUNKS_PER_TABLE, page_ranges

    for pages, count in [(10, 3), (7, 7), (3, 10), (1, 4), (0, 2), (2**32 - 1, 5), (10**6, 5000)]:
        ranges = page_ranges(pages, count)
        assert ranges[0][0] == 0 and ranges[-1][1] is None  # past-the-end pages are covered
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        assert all(end is None or start < end for start, end in ranges)  # none empty
        assert len(ranges) <= min(max(pages, 1), count, MAX_CHUNKS_PER_TABLE)


def test_split_only_above_threshold_and_at_least_one_range_per_job() -> None:
    from asyncsnap.plan import chunk_count

    big = Table(
        oid=1,
        schema="s",
        name="big",
        kind="table",
        parent=None,
        est_rows=0,
        table_bytes=10 * 2**30,
        readable=True,
        heap_pages=1_000_000,
    )
    small = Table(
        oid=2,
        schema="s",
        name="small",
        kind="table",
        parent=None,
        est_rows=0,
        table_bytes=100,
        readable=True,
        heap_pages=1,
    )
    assert chunk_count(big, split_larger_than=None, jobs=4) == 1
    assert chunk_count(small, split_larger_than=1, jobs=4) == 1  # one page: nothing to split
    assert chunk_count(big, split_larger_than=20 * 2**30, jobs=4) == 1
    assert chunk_count(big, split_larger_than=8 * 2**30, jobs=4) == 4  # at least -j ranges
    assert chunk_count(big, split_larger_than=2**30, jobs=2) == 10  # one per threshold
    assert chunk_count(big, split_larger_than=2**30, jobs=4) == 12  # a multiple of -j
    assert chunk_count(big, split_larger_than=4 * 2**30, jobs=2) == 4  # 3 -> 4
    chunks = plan_chunks([big, small], split_larger_than=2**30, jobs=2)
    assert [c.stem.rsplit(".", 1)[-1] for c in chunks if c.table.name == "big"][:2] == [
        "0001",
        "0002",
    ]
    assert chunks[-1].table.name == "small" and chunks[-1].pages is None


def test_weighted_ranges_balance_bytes_not_pages() -> None:
    from asyncsnap.plan import page_ranges, weighted_page_ranges

    # 90% of the pages hold 1 unit each; the last 10% hold 100 units (big TOASTed values).
    samples = [(p, 1 if p < 900 else 100) for p in range(0, 1000, 10)]
    ranges = weighted_page_ranges(1000, 4, samples)
    assert ranges[0] == (0, 920) and ranges[-1][1] is None

    def weight(r: tuple[int, int | None]) -> int:
        return sum(w for p, w in samples if p >= r[0] and (r[1] is None or p < r[1]))

    balanced = [weight(r) for r in ranges]
    equal = [weight(r) for r in page_ranges(1000, 4)]
    assert max(balanced) / min(balanced) < 1.6 < max(equal) / min(equal)
    # Uniform weights give the equal ranges; no sample falls back to them.
    assert weighted_page_ranges(1000, 4, [(p, 5) for p in range(0, 1000, 10)]) == page_ranges(
        1000, 4
    )
    assert weighted_page_ranges(10, 3, []) == page_ranges(10, 3)


def test_chunk_row_estimates_share_the_table_estimate_by_pages() -> None:
    """Progress shows each range's share of the table's estimate, not the whole estimate
    per range (which made a 1 M-row table split four ways read '~4000000 rows')."""
    from dataclasses import replace

    big = replace(table("big", size=10 * 2**30), est_rows=1_000_000, heap_pages=1000)
    whole = replace(table("whole", size=10), est_rows=7, heap_pages=1)
    chunks = plan_chunks([big, whole], split_larger_than=2**30, jobs=2)
    ranged = [c for c in chunks if c.table.name == "big"]
    assert len(ranged) == 10 and all(c.est_rows == 100_000 for c in ranged)
    assert sum(c.est_rows for c in chunks) == 1_000_007


def test_sample_size_follows_the_number_of_ranges_within_bounds() -> None:
    from asyncsnap.plan import sample_pages

    assert sample_pages(2) == sample_pages(4) == 256  # a small split samples little
    assert sample_pages(10) == 640
    assert sample_pages(1024) == 2000  # the cap bounds the cost on huge tables


def test_every_name_a_dump_gives_is_one_retention_knows() -> None:
    """prune removes only files with the names a dump writes (manifest.written_by_dump):
    every stem file_stem gives, split or not, in every compression, and the large
    objects' file, match; look-alikes do not."""
    from asyncsnap.format import EXTENSIONS, written_by_dump
    from asyncsnap.largeobjects import LARGE_OBJECTS_STEM

    names = [
        "t",
        "Order Items",
        "ÄÖÜ",
        "",
        "_",
        "-",
        "x" * 300,
        "a.b",
        "日本",
        "..",
        "a/b",
        "é" * 50,
    ]
    stems = [file_stem(s, n) for s, n in itertools.product(names, repeat=2)]
    stems += [f"{stem}.{i:04d}" for stem in stems[:5] for i in (1, 9999, 10000)]
    stems.append(LARGE_OBJECTS_STEM)
    for stem, ext in itertools.product(stems, EXTENSIONS.values()):
        assert written_by_dump(f"data/{stem}{ext}"), (stem, ext)
    stem = file_stem("public", "t")
    for other in (
        "data/notours.txt",
        f"data/{stem}.ndjson.zst.orig",
        f"data/{stem}.ndjson.bz2",
        f"data/.{stem}.ndjson.zst.tmp",
        f"{stem}.ndjson.zst",
        f"data/sub/{stem}.ndjson",
        f"data/{stem}.1.ndjson",
        "manifest.json.bak",
        "schema/other.sql",
        "claim.json",
    ):
        assert not written_by_dump(other), other
    for fixed in ("manifest.json", "SHA256SUMS", "schema/schema.pgdump", "schema/schema.sql"):
        assert written_by_dump(fixed)


def test_a_chunks_bytes_are_its_share_of_the_tables_pages() -> None:
    """``Chunk.est_bytes``: a whole table's size; a page range's share of it; the last
    range runs to the table's end."""
    from dataclasses import replace

    big = replace(table("big", size=80 << 20), heap_pages=10_000)
    chunks = {c.index: c for c in plan_chunks([big], split_larger_than=20 << 20, jobs=2)}
    assert len(chunks) == 4
    assert sum(c.est_bytes for c in chunks.values()) == 80 << 20
    assert all(c.est_bytes == 20 << 20 for c in chunks.values())
    (whole,) = plan_chunks([table("small", size=4096)])
    assert whole.est_bytes == 4096


def test_only_a_big_chunks_small_reads_wait_for_more_to_arrive() -> None:
    """``jobs.read_pause``: a small read of a big chunk waits for the socket to gather
    more; a big read never waits, and a small table (its whole COPY one small read)
    never does: 3,000 of them would wait seconds."""
    from dataclasses import replace

    from asyncsnap.jobs import GATHER_FROM, READ_PAUSE, SMALL_READ, read_pause

    (big,) = plan_chunks([replace(table("big", size=GATHER_FROM), heap_pages=512)])
    (small,) = plan_chunks([table("small", size=GATHER_FROM - 1)])
    assert read_pause(big, 8192) == READ_PAUSE > 0
    assert read_pause(big, SMALL_READ - 1) == READ_PAUSE
    assert read_pause(big, SMALL_READ) == 0
    assert read_pause(small, 100) == 0
    assert read_pause(small, SMALL_READ) == 0
