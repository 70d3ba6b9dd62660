"""A restore's options, gathered and checked once (``asyncsnap.restore.options``), without
a server: each wrong combination is refused with its own message and hint."""

from __future__ import annotations

import pytest

from asyncsnap.errors import UsageError
from asyncsnap.restore.options import RestoreOptions


def test_patterns_become_one_selection() -> None:
    options = RestoreOptions.build(tables=["public.orders*"], exclude_schemas=["audit"], jobs=4)
    assert options.jobs == 4 and options.selection.filters
    assert not RestoreOptions.build().selection.filters  # no pattern: every table


@pytest.mark.parametrize(
    ("given", "message", "hint"),
    [
        ({"jobs": 0}, "-j must be at least 1, not 0", "try -j 2"),
        ({"mode": "merge"}, "unknown mode 'merge'", "use refuse, truncate or append"),
        (
            {"compare": True, "schema_only": True},
            "--compare compares the rows a restore loaded; --schema-only loads none",
            "drop one of the two",
        ),
        (
            {"compare": True, "dry_run": True},
            "--compare compares the rows a restore loaded; --dry-run loads none",
            "drop one of the two",
        ),
    ],
)
def test_a_wrong_option_is_refused_before_anything_is_opened(
    given: dict[str, object], message: str, hint: str
) -> None:
    with pytest.raises(UsageError) as caught:
        RestoreOptions.build(**given)  # type: ignore[arg-type]
    assert (caught.value.message, caught.value.hint) == (message, hint)


@pytest.mark.parametrize(
    ("create", "clean", "refused"),
    [(False, False, True), (True, False, True), (False, True, True), (True, True, False)],
)
def test_drop_database_needs_create_and_clean(create: bool, clean: bool, refused: bool) -> None:
    options = RestoreOptions.build(drop_database=True, create=create, clean=clean)
    if not refused:
        options.check_drop_database()
        return
    with pytest.raises(UsageError, match="--drop-database is for --create --clean"):
        options.check_drop_database()


def test_the_options_are_frozen() -> None:
    options = RestoreOptions.build()
    with pytest.raises(AttributeError):
        options.jobs = 8  # type: ignore[misc]
