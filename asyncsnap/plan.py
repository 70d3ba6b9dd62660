"""Pure planning: what to copy in which order, file names, and the restore order.

No I/O here, so all of it is tested without a server.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .catalog import Table

TableKey = tuple[str, str]

_UNSAFE = re.compile(r"[^a-z0-9_-]+")
_SLUG_MAX = 40
# Every stem file_stem returns, and a split table's numbered ones (``.0001``, ...): what
# retention takes for a dump's data file name (``manifest.written_by_dump``).
STEM_PATTERN = r"[a-z0-9_-]{1,40}\.[a-z0-9_-]{1,40}-[0-9a-f]{12}(?:\.[0-9]{4,})?"


def file_stem(schema: str, name: str) -> str:
    """A file-name stem for a table that is safe on any filesystem.

    Lower-case ASCII letters, digits, ``_`` and ``-`` from the names (so it reads well in a
    listing), then a hash of the exact names, so that tables differing only in case, in
    characters outside that set or beyond the length limit never collide, even on
    case-insensitive filesystems. At most 40+1+40+1+12 characters.

    >>> file_stem("public", "Order Items")
    'public.order_items-6f25da249ea5'
    """
    digest = hashlib.sha256(f"{schema}\x00{name}".encode()).hexdigest()[:12]
    return f"{_slug(schema)}.{_slug(name)}-{digest}"


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    slug = _UNSAFE.sub("_", ascii_text).strip("_")[:_SLUG_MAX]
    return slug or "_"


@dataclass(frozen=True, slots=True)
class Chunk:
    """One unit of work: a table, or a page range of it, copied into one file.

    ``pages`` is ``None`` for a whole table, else ``(first, end)``: the rows whose ctid
    block number is ``>= first`` and ``< end``; ``end`` is ``None`` for the last range,
    which so also covers pages added past the size measured when planning.
    """

    table: Table
    index: int  # position of this chunk within its table, from 0
    count: int  # how many chunks the table has
    stem: str  # file name without extension
    pages: tuple[int, int | None] | None = None

    @property
    def est_rows(self) -> int:
        """The catalog's row estimate, shared out by pages: for progress only."""
        return self._share(self.table.est_rows)

    @property
    def est_bytes(self) -> int:
        """The table's size shared out by pages: how big its COPY will be, roughly."""
        return self._share(self.table.table_bytes)

    def _share(self, whole: int) -> int:
        """This chunk's share of the table's ``whole``, by its pages (all of it for the
        first chunk of a table not split by pages)."""
        if self.pages is None or self.table.heap_pages <= 0:
            return whole if self.index == 0 else 0
        first, end = self.pages
        span = max(0, (self.table.heap_pages if end is None else end) - first)
        return whole * span // self.table.heap_pages

    @property
    def label(self) -> str:
        if self.count == 1:
            return self.table.qualified
        return f"{self.table.qualified} [{self.index + 1}/{self.count}]"


# Never more files for one table than this, however small --split-larger-than is.
# One stream renders JSON at roughly 100-150 MB/s of table (measured at design time, 0.1):
# above this a table is worth several backends.
DEFAULT_SPLIT_LARGER_THAN = 64 * 1024 * 1024
# Page ranges are read with a TID Range Scan, which PostgreSQL has from 14 on.
TID_RANGE_SCAN_VERSION = 140000
MAX_CHUNKS_PER_TABLE = 1024


def page_ranges(pages: int, count: int) -> list[tuple[int, int | None]]:
    """``count`` contiguous ranges over ``pages`` heap pages, the last one open-ended.

    >>> page_ranges(10, 3)
    [(0, 3), (3, 6), (6, None)]
    """
    count = max(1, min(count, pages, MAX_CHUNKS_PER_TABLE))
    bounds = [pages * i // count for i in range(count)]
    return [(start, bounds[i + 1] if i + 1 < count else None) for i, start in enumerate(bounds)]


def sample_pages(ranges: int) -> int:
    """How many heap pages to sample to cut a table into ``ranges`` byte-balanced ranges.

    64 sampled pages per range place each cut within a few percent of its share; the
    floor keeps small splits honest and the cap bounds the cost. A fixed 2000 pages took
    60-90 ms (warm, pgbench rows), a tenth of a 1 M-row dump and a third of the 21.8%
    spread in time per row between 1 M and 10 M rows.
    """
    return max(256, min(2000, 64 * ranges))


def chunk_count(table: Table, *, split_larger_than: int | None, jobs: int) -> int:
    """How many ranges a table is read in: one, unless it is larger than the threshold;
    then one per threshold's worth, at least ``jobs``, rounded up to a multiple of ``jobs``
    so that no connection sits idle at the end."""
    if split_larger_than is None or table.table_bytes <= split_larger_than:
        return 1
    wanted = max(jobs, -(-table.table_bytes // split_larger_than))
    # A multiple of jobs: 3 ranges on 2 connections leave one idle for the last third
    # (measured: 1 M rows took 0.78 s per M rows against 0.60 at 5 M).
    wanted = -(-wanted // jobs) * jobs
    return len(page_ranges(table.heap_pages, wanted))


def plan_chunks(
    tables: Iterable[Table],
    *,
    split_larger_than: int | None = None,
    jobs: int = 1,
    weights: Mapping[TableKey, Sequence[tuple[int, int]]] | None = None,
) -> list[Chunk]:
    """The chunks to copy, largest first so the longest copy starts earliest.

    Partitioned parents hold no rows and get no chunk; each partition is its own table.
    Tables larger than ``split_larger_than`` bytes (heap and TOAST) are read in ctid page
    ranges, each its own chunk and file; ``None`` never splits. ``weights`` (sampled
    ``(page, bytes)``, see ``weighted_page_ranges``) balance the ranges of those tables.
    """
    chunks = []
    for t in tables:
        if not t.has_data:
            continue
        stem = file_stem(t.schema, t.name)
        count = chunk_count(t, split_larger_than=split_larger_than, jobs=jobs)
        if count == 1:
            chunks.append(Chunk(table=t, index=0, count=1, stem=stem))
            continue
        sample = (weights or {}).get(t.key)
        ranges = (
            weighted_page_ranges(t.heap_pages, count, sample)
            if sample
            else page_ranges(t.heap_pages, count)
        )
        if len(ranges) == 1:  # the bytes all sit on one page
            chunks.append(Chunk(table=t, index=0, count=1, stem=stem))
            continue
        for i, pages in enumerate(ranges):
            chunks.append(
                Chunk(table=t, index=i, count=len(ranges), stem=f"{stem}.{i + 1:04d}", pages=pages)
            )
    stems = [c.stem for c in chunks]
    if len(set(stems)) != len(stems):  # 48 bits of hash: cannot happen by accident
        raise AssertionError("file name collision between two tables")
    per_chunk = {c.stem: c.table.table_bytes / c.count for c in chunks}
    return sorted(chunks, key=lambda c: (-per_chunk[c.stem], c.table.key, c.index))


@dataclass(frozen=True)
class RestoreOrder:
    """Tables in levels: every table's referenced tables are in an earlier level or, for
    tables in a foreign-key cycle, in the same level.

    ``cycles`` lists each set of tables whose foreign keys form a cycle (two or more
    tables); ``self_referencing`` the tables with a foreign key to themselves. A restore
    has to handle both explicitly (deferred constraints or dropping and re-adding them).
    """

    levels: list[list[TableKey]]
    cycles: list[list[TableKey]]
    self_referencing: list[TableKey]


def restore_order(tables: Sequence[Table]) -> RestoreOrder:
    """Order ``tables`` so that parents (referenced tables) load before children.

    Partitions take the place of their top-most selected ancestor in the graph, since
    foreign keys are declared on the partitioned table. References to tables outside the
    selection are ignored: they cannot be ordered, and the restore of those rows needs
    the referenced data to be there already.
    """
    by_key = {t.key: t for t in tables}

    def root(key: TableKey) -> TableKey:
        seen = 0
        while (parent := by_key[key].parent) is not None and parent in by_key and seen < 1000:
            key = parent
            seen += 1
        return key

    nodes = sorted({root(t.key) for t in tables})
    edges: dict[TableKey, set[TableKey]] = {n: set() for n in nodes}  # child -> parents
    self_ref: set[TableKey] = set()
    for t in tables:
        for fk in t.foreign_keys:
            ref = (fk.ref_schema, fk.ref_table)
            if ref not in by_key:
                continue
            child, parent = root(t.key), root(ref)
            if child == parent:
                self_ref.add(child)
            else:
                edges[child].add(parent)

    components = _strongly_connected(nodes, edges)
    component_of = {n: i for i, comp in enumerate(components) for n in comp}
    level_of_component: dict[int, int] = {}

    # Tarjan emits components in reverse topological order of the child->parent graph:
    # a component comes after every component it points to, so parents are done first.
    for i, comp in enumerate(components):
        parents = {component_of[p] for n in comp for p in edges[n]} - {i}
        level_of_component[i] = 1 + max((level_of_component[p] for p in parents), default=-1)

    # Leaves with data, grouped by the level of their root.
    data_tables_by_root: dict[TableKey, list[TableKey]] = {}
    for t in tables:
        if t.has_data:
            data_tables_by_root.setdefault(root(t.key), []).append(t.key)
    depth = max(level_of_component.values(), default=-1) + 1
    levels: list[list[TableKey]] = [[] for _ in range(depth)]
    for node in nodes:
        level = level_of_component[component_of[node]]
        levels[level].extend(data_tables_by_root.get(node, []))
    return RestoreOrder(
        levels=[sorted(level) for level in levels if level],
        cycles=sorted(sorted(c) for c in components if len(c) > 1),
        self_referencing=sorted(self_ref),
    )


def _strongly_connected(
    nodes: Sequence[TableKey], edges: Mapping[TableKey, set[TableKey]]
) -> list[list[TableKey]]:
    """Tarjan's algorithm without recursion (schemas can have thousands of tables)."""
    index: dict[TableKey, int] = {}
    low: dict[TableKey, int] = {}
    on_stack: set[TableKey] = set()
    stack: list[TableKey] = []
    result: list[list[TableKey]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work: list[tuple[TableKey, list[TableKey]]] = [(start, sorted(edges[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, pending = work[-1]
            if pending:
                succ = pending.pop()
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, sorted(edges[succ])))
                elif succ in on_stack:
                    low[node] = min(low[node], index[succ])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(sorted(component))
    return result


@dataclass(frozen=True)
class CyclePlan:
    """How the foreign keys among ``tables`` (a cycle, or one self-referencing table) are
    kept from failing while rows arrive in batches in any order.

    ``defer``: every such constraint is DEFERRABLE; the tables load in one transaction with
    ``SET CONSTRAINTS ... DEFERRED`` and are checked at commit. ``drop-and-recreate``: the
    constraints are dropped, the data loaded, and the constraints added back (which
    validates every row). ``disable-triggers``: with --disable-triggers, the tables' triggers
    (foreign-key checks included) are off during the load and nothing is validated.
    """

    tables: tuple[TableKey, ...]
    constraints: tuple[tuple[TableKey, str], ...]  # (table, constraint name)
    strategy: str  # "defer" | "drop-and-recreate" | "disable-triggers"


def plan_cycles(
    tables: Sequence[Table], order: RestoreOrder, *, disable_triggers: bool
) -> list[CyclePlan]:
    """A plan for each cycle and self-referencing table in ``order``."""
    by_key = {t.key: t for t in tables}
    groups = [tuple(c) for c in order.cycles] + [(k,) for k in order.self_referencing]
    plans = []
    for group in groups:
        members = set(group)
        constraints = []
        all_deferrable = True
        for key in group:
            for fk in by_key[key].foreign_keys:
                if (fk.ref_schema, fk.ref_table) in members:
                    constraints.append((key, fk.name))
                    all_deferrable &= fk.deferrable
        if disable_triggers:
            strategy = "disable-triggers"
        elif all_deferrable:
            strategy = "defer"
        else:
            strategy = "drop-and-recreate"
        plans.append(CyclePlan(tables=group, constraints=tuple(constraints), strategy=strategy))
    return plans


def weighted_page_ranges(
    pages: int, count: int, samples: Sequence[tuple[int, int]]
) -> list[tuple[int, int | None]]:
    """Like ``page_ranges``, but cut where the sampled *weight* (bytes of the values,
    TOAST included) reaches equal shares, so a range of pages holding large TOASTed values
    is not ten times the work of another. ``samples`` are ``(page, weight)`` pairs from a
    page-level sample; each sampled page stands for the pages up to the next one. Falls
    back to equal page ranges when the sample cannot say anything, and gives fewer ranges
    than ``count`` when the bytes sit on fewer pages than that.

    >>> weighted_page_ranges(100, 2, [(10, 1), (50, 1), (90, 98)])
    [(0, 90), (90, None)]
    """
    points = sorted((p, w) for p, w in samples if 0 <= p < pages and w > 0)
    total = sum(w for _, w in points)
    count = max(1, min(count, pages, MAX_CHUNKS_PER_TABLE))
    if count == 1 or len(points) < count or total <= 0:
        return page_ranges(pages, count)
    bounds = [0]
    cumulative = 0
    share = 1
    for page, weight in points:
        # A boundary goes before the page whose middle reaches the next share, so that
        # one heavy page starts a range instead of ending one.
        if share < count and cumulative + weight / 2 >= total * share / count and page > bounds[-1]:
            bounds.append(page)
            share += 1
        cumulative += weight
    # Fewer ranges than asked when the bytes sit on a few pages (a range is at least one
    # page): balanced beats many.
    return [
        (start, bounds[i + 1] if i + 1 < len(bounds) else None) for i, start in enumerate(bounds)
    ]


def refresh_order(
    views: Sequence[TableKey], reads: Iterable[tuple[TableKey, TableKey]]
) -> list[TableKey]:
    """Materialized views in an order that refreshes each after every materialized view
    it reads, directly or through plain views; ``reads`` are ``(view, relation)`` edges.

    >>> refresh_order([("s", "top"), ("s", "base")], [(("s", "top"), ("s", "base"))])
    [('s', 'base'), ('s', 'top')]
    """
    uses: dict[TableKey, set[TableKey]] = {}
    for view, relation in reads:
        uses.setdefault(view, set()).add(relation)
    wanted = set(views)
    ordered: list[TableKey] = []
    state: dict[TableKey, int] = {}  # 1: being visited, 2: done

    def visit(key: TableKey) -> None:
        if state.get(key):
            return  # done, or a cycle (views cannot form one; stop rather than loop)
        state[key] = 1
        for used in sorted(uses.get(key, ())):
            visit(used)
        state[key] = 2
        if key in wanted:
            ordered.append(key)

    for view in sorted(wanted):
        visit(view)
    return ordered
