"""The renderers: plain log lines, the live display and the closing summary table."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from rich.console import Console

from asyncsnap.cli.progress import LiveDisplay, PlainLog, human_bytes, summary_table
from asyncsnap.dump import TableResult
from asyncsnap.events import (
    ChunkFinished,
    ChunkProgress,
    ChunkStarted,
    DumpFinished,
    DumpStarted,
    Event,
)

from .conftest import Database
from .helpers import manifest_of, run_on_a_terminal

EVENTS: list[Event] = [
    DumpStarted(
        snapshot_id="00000003-0000001B-1",
        target="u@h:5432/db",
        tables=2,
        chunks=2,
        est_rows=1000,
        jobs=2,
        path="/b/x.partial",
    ),
    ChunkStarted(label="public.big", est_rows=900),
    ChunkStarted(label="public.small", est_rows=100),
    ChunkProgress(label="public.big", rows=450, bytes=45_000),
    ChunkFinished(label="public.small", rows=100, bytes=10_000, stored_bytes=2_000, seconds=0.1),
]
DONE = DumpFinished(
    path="/b/x",
    tables=2,
    rows=1000,
    bytes=100_000,
    stored_bytes=20_000,
    seconds=1.5,
    snapshot_held_seconds=1.4,
)


def test_plain_log_one_line_per_event_without_progress_noise() -> None:
    out = io.StringIO()
    log = PlainLog(out)
    for event in [*EVENTS, DONE]:
        log(event)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # ChunkProgress is not logged
    assert "dump started: 2 tables" in lines[0] and "snapshot 00000003-0000001B-1" in lines[0]
    assert "copied public.small: 100 rows" in lines[3]
    assert "dump complete: /b/x: 2 tables, 1000 rows" in lines[4] and "held 1.40s" in lines[4]


def test_live_display_tracks_running_tables() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    with LiveDisplay(console) as live:
        for event in EVENTS:
            live(event)
        tasks = {t.description: t for t in live._progress.tasks}
        assert tasks["public.big"].completed == 450 and tasks["public.big"].total == 900
        assert "public.small" not in tasks  # finished tables leave the display
        overall = next(t for d, t in tasks.items() if d.startswith("total"))
        assert overall.completed == 550 and overall.total == 1000
        live(DONE)


def test_a_bar_past_its_estimate_keeps_its_clock_running() -> None:
    """A page range estimated at 10 rows that has sent 450: rich took the bar as finished
    and froze its elapsed time at 0:00:00 while the range went on."""
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with LiveDisplay(console) as live:
        live(ChunkStarted(label="public.big [2/2]", est_rows=10))
        live(ChunkProgress(label="public.big [2/2]", rows=450, bytes=45_000))
        [task] = [t for t in live._progress.tasks if t.description == "public.big [2/2]"]
        assert not task.finished and task.completed == 450 and (task.total or 0) > 450


def test_summary_table_has_one_row_per_table_with_its_rate() -> None:
    """A split table's page ranges were one row each, sorted as strings ([1/12], [10/12],
    [11/12], [2/12]); now one row per table, in name order, with seconds and rows/s."""
    tables = [
        TableResult("public", "small", 100, 10_000, 2_000, ("s",), 0.1, wall_seconds=0.1),
        TableResult(
            "public", "big", 900, 90_000, 18_000, tuple(f"b{i}" for i in range(12)), 2.4, 1.2
        ),
    ]
    screen = io.StringIO()
    Console(file=screen, width=120).print(summary_table(tables, DONE))
    cells = [
        [c.strip() for c in line.split("│")[1:-1]]
        for line in screen.getvalue().splitlines()
        if line.startswith("│")
    ]
    assert cells == [
        ["public.big", "900", human_bytes(18_000), "1.20", "750"],  # wall time, not 2.40
        ["public.small", "100", human_bytes(2_000), "0.10", "1,000"],
        ["2 tables", "1,000", human_bytes(20_000), "1.50", "667"],
    ]


def test_human_bytes() -> None:
    assert human_bytes(512) == "512 B" and human_bytes(2048) == "2.0 KiB"
    assert human_bytes(5 * 2**40) == "5.0 TiB"


def test_on_a_terminal_the_summary_has_one_row_per_table_and_stdout_the_path(
    db: Database, tmp_path: Path
) -> None:
    """A dump on a real (pseudo-)terminal: the live display, then the closing table with
    one row per table (a split table's ranges together, no [1/4] rows) and rows/s, and the
    backup's path as the last line."""
    db.execute(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS pad FROM generate_series(1, 60000) g;"
        "CREATE TABLE small AS SELECT 1 AS id; ANALYZE"
    )
    status, output = run_on_a_terminal(
        [sys.executable, "-m", "asyncsnap", "dump", db.dsn, "-o", str(tmp_path), "--name", "b",
         "--split-larger-than", "1MB"],
    )  # fmt: skip
    assert status == 0, output
    lines = [line.strip() for line in output.replace("\r", "\n").splitlines() if line.strip()]
    rows = [line for line in lines if line.startswith("│ public.")]
    assert [r.split("│")[1].strip() for r in rows] == ["public.big", "public.small"], output
    assert "rows/s" in output and "[1/" not in "".join(rows)
    assert rows[0].split("│")[2].strip() == "60,000"
    assert lines[-1] == str(tmp_path / "b")
    assert len(manifest_of(tmp_path / "b")["tables"][0]["files"]) > 1  # it was split
