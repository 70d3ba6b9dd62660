"""The retention policy (``asyncsnap.storage.retention``), pure: which backups ``prune``
and ``dump --keep`` keep, for a directory and a store alike, without a server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncsnap.storage.retention import Candidate, apply_policy


def backup(day: int, name: str | None = None) -> Candidate:
    started = f"2026-01-{day:02d}T00:00:00Z"
    return Candidate(name or f"backup_202601{day:02d}T000000Z", started)


def test_the_newest_are_kept_whatever_the_listing_order() -> None:
    found = [backup(3), backup(1), backup(5), backup(2), backup(4)]
    decision = apply_policy(found, keep=2, include_named=False)
    assert decision.kept == ["backup_20260105T000000Z", "backup_20260104T000000Z"]
    assert decision.removed == [
        "backup_20260103T000000Z",
        "backup_20260102T000000Z",
        "backup_20260101T000000Z",
    ]


def test_time_decides_not_the_name() -> None:
    """A backup renamed by hand to an older-looking default name is still the newest."""
    late = Candidate("backup_20250101T000000Z", "2026-02-01T00:00:00Z")
    decision = apply_policy([backup(1), late], keep=1, include_named=False)
    assert decision.kept == ["backup_20250101T000000Z"]
    assert decision.removed == ["backup_20260101T000000Z"]


def test_backups_with_names_of_their_own_are_left_alone_unless_included() -> None:
    found = [backup(1), backup(2), backup(3, "before-migration")]
    decision = apply_policy(found, keep=1, include_named=False)
    assert decision.named == ["before-migration"]
    assert decision.kept == ["backup_20260102T000000Z"]
    included = apply_policy(found, keep=1, include_named=True)
    assert included.kept == ["before-migration"] and included.named == []
    assert included.removed == ["backup_20260102T000000Z", "backup_20260101T000000Z"]


def test_a_backup_without_a_start_time_is_never_removed() -> None:
    found = [backup(1), backup(2), Candidate("backup_20260103T000000Z", None)]
    decision = apply_policy(found, keep=1, include_named=False)
    assert decision.reasons == {"backup_20260103T000000Z": "its manifest.json has no started_at"}
    assert "backup_20260103T000000Z" not in decision.kept + decision.removed


def test_a_same_second_suffix_counts_as_a_default_name() -> None:
    found = [backup(1), backup(1, "backup_20260101T000000Z-2")]
    decision = apply_policy(found, keep=1, include_named=False)
    assert decision.kept == ["backup_20260101T000000Z-2"] and decision.named == []


def test_keep_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        apply_policy([backup(1)], keep=0, include_named=False)


def test_the_parents_of_a_kept_increment_are_kept_with_the_reason() -> None:
    found = [
        Candidate("backup_20260101T000000Z", "2026-01-01T00:00:00Z"),  # a full backup
        Candidate("backup_20260102T000000Z", "2026-01-02T00:00:00Z", "backup_20260101T000000Z"),
        Candidate("backup_20260103T000000Z", "2026-01-03T00:00:00Z", "backup_20260102T000000Z"),
        Candidate("backup_20260104T000000Z", "2026-01-04T00:00:00Z"),  # a new chain
    ]
    decision = apply_policy(found, keep=2, include_named=False)
    assert decision.kept == ["backup_20260104T000000Z", "backup_20260103T000000Z"]
    assert decision.removed == []
    assert sorted(decision.reasons) == ["backup_20260101T000000Z", "backup_20260102T000000Z"]
    assert "increment kept follows it" in decision.reasons["backup_20260101T000000Z"]
    # Once the old chain's last increment is past the count, the whole chain goes.
    assert apply_policy(found, keep=1, include_named=False).removed == [
        "backup_20260103T000000Z",
        "backup_20260102T000000Z",
        "backup_20260101T000000Z",
    ]


@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.booleans(), st.integers(0, 30)), min_size=1, max_size=25
    ),
    st.integers(1, 6),
    st.booleans(),
)
def test_no_kept_backup_ever_loses_an_ancestor(
    shapes: list[tuple[int, bool, int]], keep: int, include_named: bool
) -> None:
    """Random forests of chains (an increment's parent is an older backup): whatever is
    kept, left alone or kept for a reason has every ancestor outside ``removed``."""
    found: list[Candidate] = []
    for i, (_, named, parent_pick) in enumerate(shapes):
        name = f"mine-{i}" if named else f"backup_2026{1 + i // 28:02d}{1 + i % 28:02d}T000000Z"
        parent = found[parent_pick % i].name if i and parent_pick % 3 else None
        found.append(Candidate(name, f"2026-01-01T00:00:{i:02d}Z", parent))
    decision = apply_policy(found, keep=keep, include_named=include_named)
    parents = {c.name: c.parent for c in found}
    removed = set(decision.removed)
    for name in [*decision.kept, *decision.named, *decision.reasons]:
        parent = parents[name]
        while parent is not None:
            assert parent not in removed, (name, parent, decision)
            parent = parents[parent]
    assert removed.isdisjoint(decision.kept)
    assert len(decision.kept) <= keep
