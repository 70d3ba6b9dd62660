"""Reading a backup back the way an outside consumer would: manifest, then files."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import zstandard


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


def read_rows(backup: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every table's rows, from the files the manifest lists, parsed with ``json``."""
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


def manifest_of(backup: Path) -> dict[str, Any]:
    return json.loads((backup / "manifest.json").read_text())  # type: ignore[no-any-return]


def table_entry(backup: Path, schema: str, name: str) -> dict[str, Any]:
    for t in manifest_of(backup)["tables"]:
        if (t["schema"], t["name"]) == (schema, name):
            return t  # type: ignore[no-any-return]
    raise KeyError((schema, name))
