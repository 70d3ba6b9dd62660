"""Static checks are part of the test command: ruff (lint and format) and mypy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_lint() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_on_the_package_tests_and_benchmarks() -> None:
    result = run("mypy", "asyncsnap", "tests", "benchmarks", "throwaway")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_library_core_does_not_import_rich_or_typer() -> None:
    """Presentation is the CLI's: dump, restore, verify and inspect report events and
    return dataclasses, and importing them pulls in neither rich nor typer."""
    probe = (
        "import sys, asyncsnap, asyncsnap.dump, asyncsnap.api, asyncsnap.restore.load, "
        "asyncsnap.verify, asyncsnap.inspect, asyncsnap.prune\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'typer'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
