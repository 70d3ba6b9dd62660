"""``schema.script_statements`` reads pg_restore's SQL without a list of its lines (ten
thousand tables' pre-data: 21 MB of line objects for 2.3 MB of SQL). Held here to what
the line-by-line reading it replaced gave, on random scripts made of the lines that
matter (restrict pairs, other meta-commands, the prologue's SETs, headers), with and
without a final newline: the same text, or the same error."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncsnap.errors import RestoreFailed
from asyncsnap.schema import script_statements

_RESTRICT = re.compile(rb"\\restrict ([A-Za-z0-9]+)")
_PROLOGUE_SET = re.compile(rb"SET ([a-z_]+) = [^;\n]*;")
KNOWN = frozenset({"statement_timeout", "row_security", "search_path"})


def line_by_line(sql: bytes, known_settings: frozenset[str]) -> str:
    """The reading ``script_statements`` replaced (asyncsnap 2026-12-04), the oracle."""
    key = None
    kept = []
    in_prologue = True
    encoding = "utf-8"
    for line in sql.split(b"\n"):
        if key is None and line.startswith(b"\\restrict "):
            found = _RESTRICT.fullmatch(line)
            if found is None:
                raise RestoreFailed("the schema's SQL has a malformed \\restrict line")
            key = found.group(1)
            continue
        if key is not None and line == b"\\unrestrict " + key:
            continue
        if line.startswith(b"\\"):
            raise RestoreFailed(
                "the schema's SQL holds a psql meta-command, which restore does not run: "
                + line[:60].decode("utf-8", "replace")
            )
        if in_prologue:
            if line.startswith(b"--") and b"Name:" in line:
                in_prologue = False
            else:
                found = _PROLOGUE_SET.fullmatch(line)
                if found is not None and found.group(1) == b"client_encoding":
                    encoding = {"UTF8": "utf-8", "WIN1252": "cp1252"}[line.split(b"'")[1].decode()]
                    continue
                if found is not None and found.group(1).decode() not in known_settings:
                    continue
        kept.append(line)
    return b"\n".join(kept).decode(encoding)


_LINES = st.sampled_from(
    [
        b"\\restrict K1",
        b"\\restrict K2",
        b"\\restrict bad!",
        b"\\unrestrict K1",
        b"\\unrestrict K2",
        b"\\! rm -rf /",
        b"\\",
        b" \\restrict K1",
        b"SET client_encoding = 'UTF8';",
        b"SET client_encoding = 'WIN1252';",
        b"SET statement_timeout = 0;",
        b"SET transaction_timeout = 0;",
        b"SET row_security = off;",
        b"--",
        b"-- Name: t; Type: TABLE; Schema: public; Owner: me",
        b"--Name:",
        b"",
        b"CREATE TABLE t (v text DEFAULT '\\restrict K1');",
        b"caf\xc3\xa9 \xe9",
    ]
)


def _outcome(read: object, sql: bytes) -> tuple[str, str]:
    try:
        return "text", read(sql, KNOWN)  # type: ignore[operator]
    except RestoreFailed as exc:
        return "refused", str(exc).split(":")[0]
    except UnicodeDecodeError:
        return "undecodable", ""


@settings(max_examples=1500, deadline=None)
@given(lines=st.lists(_LINES, max_size=14), final_newline=st.booleans())
def test_random_scripts_read_as_line_by_line(lines: list[bytes], final_newline: bool) -> None:
    sql = b"\n".join(lines) + (b"\n" if final_newline else b"")
    assert _outcome(script_statements, sql) == _outcome(line_by_line, sql), sql


@pytest.mark.parametrize(
    "sql",
    [
        b"",
        b"\n",
        b"\n\n",
        b"\\restrict K1",
        b"\\restrict K1\n",
        b"a\n\\restrict K1\n\\unrestrict K1",
        b"\\restrict K1\n\\unrestrict K1\n\\unrestrict K1",
        b"SET transaction_timeout = 0;\nSET transaction_timeout = 0;",
        b"-- Name: x\nSET transaction_timeout = 0;\n\\restrict K2\nb\n\\unrestrict K2\n",
    ],
)
def test_edges_read_as_line_by_line(sql: bytes) -> None:
    assert _outcome(script_statements, sql) == _outcome(line_by_line, sql), sql
