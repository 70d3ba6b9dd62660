"""The coverage-guided fuzz targets (``tests/fuzz_native.py``) run: each target for a few
hundred inputs, so the harness does not rot between the CI runs that fuzz for longer
(``.ci/run``: each target for 20 seconds on builds with libFuzzer's coverage, the last 8
with AddressSanitizer and UBSan)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def targets() -> list[str]:
    run = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_native", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


def test_every_entry_point_has_a_target() -> None:
    from asyncsnap import _rows

    entry_points = {
        name for name in dir(_rows) if callable(getattr(_rows, name)) and not name[0].isupper()
    }
    assert set(targets()) == entry_points


@pytest.mark.parametrize("target", targets())
def test_a_target_runs_and_agrees(target: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_native", target, "-runs=300", "-seed=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 300 runs" in run.stderr, run.stderr[-3000:]
