"""Small wording helpers shared by the library's messages and the CLI's output."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun, singular for one: "1 table", "2 tables", "0 tables".

    >>> count(1, "table"), count(3, "sequence"), count(2, "match", "matches")
    ('1 table', '3 sequences', '2 matches')
    """
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
