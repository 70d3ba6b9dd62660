"""The on-disk format's index: ``manifest.json`` and ``SHA256SUMS`` (docs/format.md).

The manifest is a JSON object. Its ``manifest_sha256`` is the SHA-256 of the *canonical*
serialization of every other key: compact, keys sorted, UTF-8, as orjson's
``OPT_SORT_KEYS`` writes and ``jq -cjS 'del(.manifest_sha256)'`` reproduces. Readers
check ``format`` and ``format_version`` first, then that checksum.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson

from .errors import VerificationFailed

FORMAT_NAME = "asyncsnap"
# The version this asyncsnap writes; it reads every version from 1 up to it.
FORMAT_VERSION = 3
MANIFEST_NAME = "manifest.json"
SUMS_NAME = "SHA256SUMS"
CHECKSUM_KEY = "manifest_sha256"


def canonical_bytes(body: dict[str, Any]) -> bytes:
    """The bytes the manifest checksum is computed over (``body`` without the checksum)."""
    return orjson.dumps(
        {k: v for k, v in body.items() if k != CHECKSUM_KEY}, option=orjson.OPT_SORT_KEYS
    )


def checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(body)).hexdigest()


def serialize(body: dict[str, Any]) -> bytes:
    """The manifest file's bytes: ``body`` plus its checksum, indented for people."""
    sealed = {**body, CHECKSUM_KEY: checksum(body)}
    return orjson.dumps(sealed, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def sha256sums(files: list[tuple[str, str]]) -> bytes:
    """``SHA256SUMS`` content for ``(relative path, sha256)`` pairs, as sha256sum writes it.

    Our file names are plain ASCII without backslashes or newlines, so no escaping is
    ever needed (GNU sha256sum's escaped form starts a line with a backslash).
    """
    return "".join(f"{digest}  {path}\n" for path, digest in files).encode()


def load(backup_dir: Path) -> dict[str, Any]:
    """Read and check a backup's manifest: format name, version, then checksum.

    Raises ``VerificationFailed`` naming what is wrong. A directory without a manifest is
    not a backup (an interrupted dump leaves at most a ``.partial`` directory).
    """
    path = backup_dir / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise VerificationFailed(
            f"{backup_dir} has no {MANIFEST_NAME}: not a complete asyncsnap backup",
            hint="a dump that failed or was interrupted leaves no manifest",
        ) from exc
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise VerificationFailed(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT_NAME:
        raise VerificationFailed(f"{path} is not an asyncsnap manifest")
    version = body.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise VerificationFailed(f"{path} has no valid format_version")
    if version > FORMAT_VERSION:
        raise VerificationFailed(
            f"{path} has format version {version}; this asyncsnap reads up to {FORMAT_VERSION}",
            hint="upgrade asyncsnap",
        )
    stated = body.get(CHECKSUM_KEY)
    if not isinstance(stated, str) or stated != checksum(body):
        raise VerificationFailed(
            f"{path} does not match its own checksum: it was edited or damaged"
        )
    return body
