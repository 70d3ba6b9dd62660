"""The README's first command: the tour runs end to end on a throwaway server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import clean_env

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_tour_runs_and_the_copy_is_identical() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "python -m benchmarks.tour" in readme
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.tour", "--orders", "3000"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    for step in ("$ asyncsnap dump shop", "$ asyncsnap verify", "$ asyncsnap restore"):
        assert step in out, step
    assert "customers: 300 rows" in out and "orders: 3,000 rows" in out
    assert out.count("copy identical") == 2 and "DIFFERENT" not in out
    assert "pg_dump -Fd -j 2" in out and "asyncsnap dump" in out
