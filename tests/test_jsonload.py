"""``jsonload.loads`` is orjson's answer: the same value (types, -0.0 and all) or an
error, on random documents, written in every way JSON allows, and on mutations of them."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncsnap import jsonload


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 != 1.0, 0.0 != -0.0 here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


def _outcome(parse: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "value", parse(raw)
    except orjson.JSONDecodeError:
        return "error", None


def check(raw: bytes) -> None:
    ours, theirs = _outcome(jsonload.loads, raw), _outcome(orjson.loads, raw)
    assert ours[0] == theirs[0], (raw[:200], ours, theirs)
    assert _same(ours[1], theirs[1]), (raw[:200], ours, theirs)


_NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e308, 5e-324, 2**63, -(2**63), 2**64 - 1, 2**64]),
)
_VALUES = st.recursive(
    st.none() | st.booleans() | _NUMBERS | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
# Number texts JSON allows, and some it does not, written out by hand.
_NUMBER_TEXT = st.from_regex(r"\A-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,4})?\Z")


def _written(value: Any, how: int) -> bytes:
    if how == 0:  # as orjson writes (which refuses integers past 64 bits)
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    if how == 1:
        return json.dumps(value, ensure_ascii=True).encode()
    return json.dumps(value, ensure_ascii=False, indent=2).encode()


@settings(max_examples=400, deadline=None)
@given(value=_VALUES, how=st.integers(0, 2))
def test_random_documents_parse_as_orjson_parses_them(value: Any, how: int) -> None:
    check(_written(value, how))


@settings(max_examples=400, deadline=None)
@given(
    value=_VALUES,
    how=st.integers(0, 2),
    at=st.integers(min_value=0),
    junk=st.binary(min_size=1, max_size=6)
    | st.sampled_from(
        [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"\\ud800", b"\\udfff", b'"\\ud800"']
    ),
    replace=st.booleans(),
)
def test_mutated_documents_parse_or_fail_as_orjson(
    value: Any, how: int, at: int, junk: bytes, replace: bool
) -> None:
    raw = _written(value, how)
    at %= len(raw) + 1
    check(raw[:at] + junk + raw[at + (len(junk) if replace else 0) :])


@settings(max_examples=400, deadline=None)
@given(text=_NUMBER_TEXT)
def test_numbers_written_by_hand(text: str) -> None:
    check(f'{{"n": {text}, "l": [{text}]}}'.encode())


@pytest.mark.parametrize(
    "raw",
    [
        b'"\\ud800"',  # a lone surrogate: orjson refuses it
        b'"\\ud83d\\ude00"',  # a pair: one character
        b'"\\\\ud800"',  # an escaped backslash, then text
        b"NaN",
        b"[Infinity]",
        b"-Infinity",
        b"1e400",
        b"-1e400",
        b"1e-400",
        b"123456789012345678901234567890",  # past 64 bits: orjson's float
        b"18446744073709551615",
        b"18446744073709551616",
        b"-9223372036854775808",
        b"-9223372036854775809",
        b"[" * 5000 + b"]" * 5000,  # past the standard library's recursion limit
        b'{"a": 1, "a": 2}',
        b"\xef\xbb\xbf{}",
        b'"\xff"',
        b'"\x01"',
        b"",
        b" {} ",
        b"-0",
        b"-0.0",
    ],
)
def test_where_the_two_parsers_differ(raw: bytes) -> None:
    check(raw)


def _materialized(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: v.materialized() if isinstance(v, jsonload.StreamedArray) else v
            for k, v in value.items()
        }
    return value


def check_streaming(raw: bytes) -> None:
    """``loads_streaming`` is ``loads`` once its streamed array is read, twice over."""
    try:
        streamed = jsonload.loads_streaming(raw, "tables")
    except orjson.JSONDecodeError:
        streamed_outcome: tuple[str, Any] = ("error", None)
    else:
        first = _materialized(streamed)
        assert _same(first, _materialized(streamed)), raw[:200]  # every pass the same
        streamed_outcome = ("value", first)
    whole = _outcome(orjson.loads, raw)
    assert streamed_outcome[0] == whole[0], (raw[:200], streamed_outcome, whole)
    assert _same(streamed_outcome[1], whole[1]), (raw[:200], streamed_outcome, whole)


_BODIES = st.dictionaries(
    st.sampled_from(["format", "tables", "totals", "x", ""]) | st.text(max_size=3),
    _VALUES,
    max_size=5,
)
_TABLE_LISTS = st.lists(_VALUES, max_size=6)


@settings(max_examples=400, deadline=None)
@given(body=_BODIES, tables=_TABLE_LISTS, how=st.integers(0, 2), has_tables=st.booleans())
def test_a_streamed_array_is_the_parsed_list(
    body: dict[str, Any], tables: list[Any], how: int, has_tables: bool
) -> None:
    if has_tables:
        body = {**body, "tables": tables}
    check_streaming(_written(body, how))


@settings(max_examples=400, deadline=None)
@given(
    body=_BODIES,
    tables=_TABLE_LISTS,
    how=st.integers(0, 2),
    at=st.integers(min_value=0),
    junk=st.binary(min_size=1, max_size=6)
    | st.sampled_from(
        [b",", b"]", b"[", b"}", b"{", b":", b'"tables":[1],', b'"tables":', b" ", b"\t\n"]
    ),
    replace=st.booleans(),
)
def test_a_mutated_document_streams_or_fails_as_orjson(
    body: dict[str, Any], tables: list[Any], how: int, at: int, junk: bytes, replace: bool
) -> None:
    raw = _written({**body, "tables": tables}, how)
    at %= len(raw) + 1
    check_streaming(raw[:at] + junk + raw[at + (len(junk) if replace else 0) :])


@pytest.mark.parametrize(
    "raw",
    [
        b'{"tables": [1, 2], "tables": [3]}',  # a repeated key: the last wins
        b'{"tables": [], "a": 1}',
        b'{"tables": [ ] }',
        b'{"tables": [1,]}',
        b'{"tables": [1 2]}',
        b'{"tables": {"a": 1}}',
        b'{"tables": 5}',
        b'{"tables": [[1], {"b": [2]}]} ',
        b'{"tables": [1]} x',
        b'[{"tables": [1]}]',
        b'{"a": 1,}',
        b"{}",
        b'{"tables": [NaN]}',
        b'{"tables": ["\\ud800"]}',
    ],
)
def test_streaming_where_documents_are_odd(raw: bytes) -> None:
    check_streaming(raw)


# The test for text orjson must parse, as one alternation (how it was written first).
_ONE_PATTERN = re.compile(rb"(?:\A|[\[:,])[ \t\n\r]*-?[0-9]{19}|\\u[dD][89a-fA-F]")
_PIECES = st.sampled_from(
    [
        *(b"[", b":", b",", b" ", b"\n", b"-", b"\\u", b"\\uD8", b"d9", b"\\ud", b"a", b'"'),
        *(b"0", b"1234567890123456789", b"123456789012345678", b"-9999999999999999999"),
    ]
)


@settings(max_examples=2000, deadline=None)
@given(raw=st.one_of(st.binary(max_size=64), st.lists(_PIECES, max_size=12).map(b"".join)))
def test_the_search_for_text_only_orjson_parses_is_the_one_pattern(raw: bytes) -> None:
    """``jsonload`` looks for the texts the two parsers could read differently in three
    searches (faster than one alternation): the same answer as the alternation on random
    bytes and on documents pieced from the texts that matter."""
    assert jsonload._orjson_only(raw) == bool(_ONE_PATTERN.search(raw)), raw
