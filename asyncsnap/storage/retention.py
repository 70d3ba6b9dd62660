"""Retention as one pure policy over a list (restic's ``ApplyPolicy``): which complete
backups ``prune`` and ``dump --keep`` keep and which they remove, the same for a local
directory and a prefix in a store. No I/O: the callers list, read manifests and remove."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..format import DEFAULT_NAME


@dataclass(frozen=True)
class Candidate:
    """A complete backup found where retention applies."""

    name: str  # its directory or folder name
    started_at: str | None  # the manifest's ``started_at`` (ISO 8601 UTC); None: absent
    parent: str | None = None  # an increment's parent (a sibling's name); None: a full backup


@dataclass
class Decision:
    kept: list[str] = field(default_factory=list)  # newest first
    removed: list[str] = field(default_factory=list)  # newest first
    named: list[str] = field(default_factory=list)  # names of their own: left alone
    reasons: dict[str, str] = field(default_factory=dict)  # left alone, and why


def apply_policy(found: Sequence[Candidate], *, keep: int, include_named: bool) -> Decision:
    """Keep the ``keep`` newest of the backups with a default name (``backup_<time>``;
    every backup when ``include_named``), newest by ``started_at`` (ISO 8601 in UTC sorts
    as text; then by name), remove the older ones. A backup whose manifest has no
    ``started_at`` cannot be placed in time: it is left alone, with the reason.

    >>> found = [Candidate("backup_20260101T000000Z", "2026-01-01T00:00:00Z")]
    >>> apply_policy(found, keep=1, include_named=False).kept
    ['backup_20260101T000000Z']
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    decision = Decision()
    dated: list[tuple[str, str]] = []
    for candidate in found:
        if candidate.started_at is None:
            decision.reasons[candidate.name] = "its manifest.json has no started_at"
        elif not include_named and not DEFAULT_NAME.fullmatch(candidate.name):
            decision.named.append(candidate.name)
        else:
            dated.append((candidate.started_at, candidate.name))
    dated.sort(reverse=True)
    decision.kept = [name for _, name in dated[:keep]]
    decision.removed = [name for _, name in dated[keep:]]
    _keep_chains(found, decision)
    return decision


def _keep_chains(found: Sequence[Candidate], decision: Decision) -> None:
    """Every ancestor of a kept backup out of ``removed``, into ``reasons``."""
    parents = {c.name: c.parent for c in found}
    needed: set[str] = set()
    for name in [*decision.kept, *decision.named, *decision.reasons]:
        parent = parents.get(name)
        while parent is not None and parent not in needed:
            needed.add(parent)
            parent = parents.get(parent)
    for name in needed & set(decision.removed):
        decision.removed.remove(name)
        decision.reasons[name] = "a newer increment kept follows it (its chain is kept whole)"
