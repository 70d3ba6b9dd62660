"""Reading a backup back the way an outside consumer would: manifest, then files."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pty
import select
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import zstandard

from asyncsnap import format as manifest_module

from .conftest import CliRun, clean_env


def flip_bit_mid_file(path: Path) -> None:
    """Damage a file as a bad disk would: one bit of one byte, mid-file."""
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def decompress(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.name.endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    if path.name.endswith(".gz"):
        return gzip.decompress(raw)
    return raw


def read_rows(backup: Path | str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every table's rows, from the files the manifest lists, parsed with ``json``."""
    backup = Path(backup)
    manifest = json.loads((backup / "manifest.json").read_text())
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for table in manifest["tables"]:
        key = (table["schema"], table["name"])
        rows[key] = []
        for f in table["files"]:
            for line in decompress(backup / f["path"]).splitlines():
                value = json.loads(line)
                assert isinstance(value, dict)
                rows[key].append(value)
    return rows


def manifest_of(backup: Path | str) -> dict[str, Any]:
    return json.loads((Path(backup) / "manifest.json").read_text())  # type: ignore[no-any-return]


def reseal(backup: Path | str, edit: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    """A forged (or an older version's) manifest: ``edit`` changes the body, which is then
    sealed with a valid checksum again, as a hostile writer would; the edited body."""
    path = Path(backup) / manifest_module.MANIFEST_NAME
    body: dict[str, Any] = orjson.loads(path.read_bytes())
    body.pop(manifest_module.CHECKSUM_KEY)
    edit(body)
    path.write_bytes(manifest_module.serialize(body))
    return body


def rewrite_data_file(backup: Path | str, entry: dict[str, Any], text: bytes) -> None:
    """A data file's lines replaced by ``text`` (zstd), its manifest ``entry`` made to match
    (SHA-256, sizes; the rows and fingerprint left to the caller)."""
    stored = zstandard.ZstdCompressor().compress(text)
    (Path(backup) / entry["path"]).write_bytes(stored)
    entry.update(
        sha256=hashlib.sha256(stored).hexdigest(), stored_bytes=len(stored), bytes=len(text)
    )


def table_entry(backup: Path | str, schema: str, name: str) -> dict[str, Any]:
    for t in manifest_of(backup)["tables"]:
        if (t["schema"], t["name"]) == (schema, name):
            return t  # type: ignore[no-any-return]
    raise KeyError((schema, name))


def run_on_a_terminal(argv: list[str], answer: str | None = None) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as its controlling terminal; type ``answer`` at
    the password prompt, if given. The exit status and everything it wrote (stdout and
    stderr both go to the terminal). A child still running after 60 s is killed.

    The answer waits for ``"Password: "`` with its space: Click prints "Password:" and then
    getpass switches echo off with TCSAFLUSH, which discards input typed before it, and
    writes the space. Answering at "Password" lost the answer to that flush now and then,
    and the child waited for input forever."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its terminal
        # Ctrl-C must interrupt it even when these tests run in a background job, which
        # starts with SIGINT ignored (and the ignoring is inherited through exec).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execve(argv[0], argv, {**clean_env(), "COLUMNS": "120", "TERM": "xterm"})
    output = b""
    answered = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
        if answer is not None and not answered and b"Password: " in output:
            time.sleep(0.2)  # getpass is reading by now; the flush came before its space
            os.write(fd, answer.encode() + (b"" if answer == "\x03" else b"\n"))
            answered = True
    ends = time.monotonic() + 30  # it closed the terminal: it is exiting
    while (found := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < ends:
        time.sleep(0.05)
    status = found[1]
    if found[0] == 0:  # hung (e.g. at a prompt nobody answered): not a pass
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def failed_with(
    run: CliRun, code: int, error: str, hint: str | None = None, *, stdout: str | None = ""
) -> tuple[str, str | None]:
    """Assert that a CLI run failed as README "Output for scripts" and "Exit codes"
    promise: exit ``code``, exactly one ``error:`` line, which starts with
    ``error: <error>``, at most one ``hint:`` line (which starts with ``hint: <hint>``
    when ``hint`` is given), no traceback, and ``stdout`` on stdout (nothing unless
    given; None: not checked). ``run`` is a
    ``conftest.CliRun`` (or anything with returncode, stdout and stderr). Returns the
    error and hint lines (the hint None when there is none) for closer checks."""
    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    hints = [line for line in lines if line.startswith("hint: ")]
    assert len(errors) == 1 and len(hints) <= 1, run.stderr
    assert errors[0].startswith(f"error: {error}"), run.stderr
    if hint is not None:
        assert hints and hints[0].startswith(f"hint: {hint}"), run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    if stdout is not None:
        assert run.stdout == stdout, run.stdout
    return errors[0], hints[0] if hints else None
