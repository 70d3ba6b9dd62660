"""Table and schema patterns with pg_dump's rules, and table selection. No I/O.

A pattern is ``name`` or ``schema.name``. Outside double quotes letters are folded to lower
case, ``*`` matches any run of characters and ``?`` any one character; inside double
quotes everything is literal and ``""`` is a quote. The dot that separates schema and name
must be outside quotes. Patterns match whole names.

>>> TablePattern.parse('public.order*').matches('public', 'orders_2024')
True
>>> TablePattern.parse('"Order"').matches('public', 'order')
False
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .catalog import Table
from .errors import NoTablesMatched, UsageError


def _split_and_translate(pattern: str) -> list[str]:
    """Split a pattern at unquoted dots and turn each part into a regular expression."""
    parts: list[str] = []
    current: list[str] = []
    in_quotes = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == '"':
            if in_quotes and i + 1 < len(pattern) and pattern[i + 1] == '"':
                current.append(re.escape('"'))
                i += 2
                continue
            in_quotes = not in_quotes
        elif in_quotes:
            current.append(re.escape(ch))
        elif ch == ".":
            parts.append("".join(current))
            current = []
        elif ch == "*":
            current.append(".*")
        elif ch == "?":
            current.append(".")
        else:
            current.append(re.escape(ch.lower()))
        i += 1
    if in_quotes:
        raise UsageError(
            f"unterminated double quote in pattern {pattern!r}",
            hint='close the quote; inside quotes write "" for a literal quote',
        )
    parts.append("".join(current))
    return parts


@dataclass(frozen=True)
class TablePattern:
    """A ``-t``/``-T`` pattern: an optional schema part and a table part."""

    text: str
    schema: re.Pattern[str] | None
    name: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> TablePattern:
        parts = _split_and_translate(text)
        if len(parts) > 2:
            raise UsageError(
                f"too many dotted names in table pattern {text!r}",
                hint="use NAME or SCHEMA.NAME (quote names that contain dots)",
            )
        if not parts[-1]:
            raise UsageError(f"empty table name in pattern {text!r}", hint="use SCHEMA.NAME")
        schema = re.compile(parts[0], re.DOTALL) if len(parts) == 2 else None
        return cls(text=text, schema=schema, name=re.compile(parts[-1], re.DOTALL))

    def matches(self, schema: str, name: str) -> bool:
        if self.schema is not None and not self.schema.fullmatch(schema):
            return False
        return self.name.fullmatch(name) is not None


@dataclass(frozen=True)
class SchemaPattern:
    """A ``-n``/``-N`` pattern."""

    text: str
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> SchemaPattern:
        parts = _split_and_translate(text)
        if len(parts) != 1 or not parts[0]:
            raise UsageError(
                f"invalid schema pattern {text!r}",
                hint="a schema pattern has no dot (quote names that contain dots)",
            )
        return cls(text=text, regex=re.compile(parts[0], re.DOTALL))

    def matches(self, schema: str) -> bool:
        return self.regex.fullmatch(schema) is not None


@dataclass(frozen=True)
class Selection:
    """Which tables to export: -t/-T/-n/-N patterns.

    A table is selected when it matches some ``include`` pattern (or there are none), its
    schema matches some ``schemas`` pattern (or there are none), and it matches no
    ``exclude`` pattern and its schema no ``exclude_schemas`` pattern. Selecting a
    partitioned table selects its partitions; excluding one excludes them.
    """

    include: tuple[TablePattern, ...] = ()
    exclude: tuple[TablePattern, ...] = ()
    schemas: tuple[SchemaPattern, ...] = ()
    exclude_schemas: tuple[SchemaPattern, ...] = ()

    @classmethod
    def from_strings(
        cls,
        *,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        schemas: Iterable[str] = (),
        exclude_schemas: Iterable[str] = (),
    ) -> Selection:
        return cls(
            include=tuple(TablePattern.parse(p) for p in include),
            exclude=tuple(TablePattern.parse(p) for p in exclude),
            schemas=tuple(SchemaPattern.parse(p) for p in schemas),
            exclude_schemas=tuple(SchemaPattern.parse(p) for p in exclude_schemas),
        )

    @property
    def filters(self) -> bool:
        """Whether any pattern was given (else every table is selected)."""
        return bool(self.include or self.exclude or self.schemas or self.exclude_schemas)

    def apply(self, tables: Sequence[Table]) -> list[Table]:
        """The selected tables, in the order given.

        A partition is judged with its chain of partitioned ancestors: it is included when
        it or an ancestor matches (so ``-t measurements`` exports every partition), and
        excluded when it or an ancestor is excluded.
        """
        by_key = {t.key: t for t in tables}

        def lineage(table: Table) -> list[Table]:
            chain = [table]
            while chain[-1].parent is not None and chain[-1].parent in by_key:
                chain.append(by_key[chain[-1].parent])
                if len(chain) > 1000:  # a cycle cannot happen in pg_inherits; be safe
                    break
            return chain

        def selected(table: Table) -> bool:
            return self._selected([(t.schema, t.name) for t in lineage(table)])

        return [t for t in tables if selected(t)]

    def matches_name(self, schema: str, name: str) -> bool:
        """Whether a relation without a lineage (a sequence) is selected by name."""
        return self._selected([(schema, name)])

    def _selected(self, chain: Sequence[tuple[str, str]]) -> bool:
        """The rules of the class docstring for a relation and its ancestors."""
        if any(p.matches(s, n) for s, n in chain for p in self.exclude):
            return False
        if any(p.matches(s) for s, _ in chain for p in self.exclude_schemas):
            return False
        if self.schemas and not any(p.matches(s) for s, _ in chain for p in self.schemas):
            return False
        if not self.include:
            return True
        return any(p.matches(s, n) for s, n in chain for p in self.include)

    def require(self, tables: Sequence[Table]) -> list[Table]:
        """Like ``apply``, but no table with data selected is an error."""
        chosen = self.apply(tables)
        if not any(t.has_data for t in chosen):
            raise self.nothing_matched()
        return chosen

    def nothing_matched(self) -> NoTablesMatched:
        """The error for filters (or a database) that select nothing to dump."""
        described = self.describe()
        if not described:  # no filter: the database itself holds nothing to dump
            return NoTablesMatched(
                "the database has no tables, sequences or large objects to dump",
                hint="check which database you connected to (the DSN, -d, DATABASE_URL or "
                "PGDATABASE); an empty backup is refused so that a wrong one is noticed",
            )
        return NoTablesMatched(
            f"no table matches the filters: {described}",
            hint="check -t/-T/-n/-N (unquoted names are folded to lower case, as in "
            "pg_dump); `psql -c '\\dt *.*'` lists the tables",
        )

    def describe(self) -> str:
        words = [f"-t {p.text}" for p in self.include]
        words += [f"-T {p.text}" for p in self.exclude]
        words += [f"-n {p.text}" for p in self.schemas]
        words += [f"-N {p.text}" for p in self.exclude_schemas]
        return " ".join(words)
