"""Parse a large JSON document (a manifest of ten thousand tables) with orjson's answer
and the standard library's peak memory.

orjson first builds its own document tree, then the Python objects: for a 14.5 MB
manifest the process peaked at 93 MiB, against 76 MiB for ``json.loads``, which builds
the objects as it reads (measured in a fresh interpreter, 2026-12-05; 76 ms against 87
ms). The two disagree on a few inputs, and orjson's answer is the one the format
defines (docs/format.md): ``loads`` hands those to orjson. They are

- integers of 19 digits or more (orjson makes a float of one past 64 bits; the standard
  library an exact int): a number of 19 digits before its point goes to orjson;
- escaped surrogates (orjson refuses a lone one; the standard library keeps it in the
  string): any ``\\uD8..`` to ``\\uDF..`` goes to orjson;
- ``NaN``, ``Infinity`` and numbers past a float's range (orjson refuses them): the
  standard library's hooks raise, and orjson says why;
- anything the standard library refuses (bad UTF-8, nesting deeper than its recursion
  limit, a syntax error): orjson parses it or names the error.

A test feeds both parsers random and mutated documents and wants the same value or an
error from each."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Generator, Iterator
from typing import Any

import orjson

# Where the two parsers could disagree (see above). A number starts the document or
# follows ``[``, ``:`` or ``,`` (a string holding such text matches too, which only costs
# orjson's memory); any 19 digits would match most manifests of ten thousand files, whose
# SHA-256s hold runs of them.
# Three searches, not one alternation: Python's engine then scans for each pattern's first
# character instead of trying every alternative at every byte (a 4.3 MB manifest of 3,000
# tables: 49 ms against 117 ms).
_FIRST_LONG_NUMBER = re.compile(rb"[ \t\n\r]*-?[0-9]{19}")  # at the document's start
_LONG_NUMBER = re.compile(rb"[\[:,][ \t\n\r]*-?[0-9]{19}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _orjson_only(raw: bytes) -> bool:
    """Whether ``raw`` holds text the two parsers could read differently (above)."""
    return bool(
        _SURROGATE_ESCAPE.search(raw) or _FIRST_LONG_NUMBER.match(raw) or _LONG_NUMBER.search(raw)
    )


class _Refused(ValueError):
    """The standard library accepted what orjson refuses: orjson will say why."""


def _refuse_constant(name: str) -> Any:
    raise _Refused(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refused(text)
    return value


_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_refuse_constant)


def loads(raw: bytes) -> Any:
    """``orjson.loads(raw)``'s value, or its ``orjson.JSONDecodeError``."""
    if _orjson_only(raw):
        return orjson.loads(raw)
    try:
        return _DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, _Refused
        return orjson.loads(raw)


# JSON's whitespace, and no other.
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, at: int) -> int:
    match = _WHITESPACE.match(text, at)
    assert match is not None  # the pattern matches the empty string
    return match.end()


class _NotPlain(Exception):
    """The document is not one the streaming reader takes (not an object, a repeated
    key, the array not an array): ``loads`` parses it whole."""


class StreamedArray:
    """A top-level array left in the document's text, parsed one element at a time on
    each pass over it: a manifest's ten thousand table entries are never all objects at
    once. Its elements are what ``loads`` gives (its structure was read through once)."""

    __slots__ = ("_start", "_text")

    def __init__(self, text: str, start: int) -> None:
        self._text, self._start = text, start

    def __iter__(self) -> Iterator[Any]:
        yield from _elements(self._text, self._start)

    def materialized(self) -> list[Any]:
        return list(self)


def _elements(text: str, start: int) -> Generator[Any, None, int]:
    """Each element of the array opening at ``start``; returns where the array ends.
    Raises ``_NotPlain`` (or the decoder's error) where it is not a JSON array."""
    at = _skip(text, start + 1)
    if text[at : at + 1] == "]":
        return at + 1
    while True:
        value, at = _DECODER.raw_decode(text, at)
        yield value
        at = _skip(text, at)
        mark = text[at : at + 1]
        if mark == "]":
            return at + 1
        if mark != ",":
            raise _NotPlain
        at = _skip(text, at + 1)


def _array_end(text: str, start: int) -> int:
    """Where the array opening at ``start`` ends (each element parsed and let go)."""
    walk = _elements(text, start)
    while True:
        try:
            next(walk)
        except StopIteration as ended:
            return int(ended.value)


def _object_streaming(text: str, key: str) -> dict[str, Any]:
    """The top-level object of ``text``, its ``key`` array a ``StreamedArray``; raises
    ``_NotPlain`` (or the decoder's error) for any other document."""
    at = _skip(text, 0)
    if text[at : at + 1] != "{":
        raise _NotPlain
    body: dict[str, Any] = {}
    at = _skip(text, at + 1)
    if text[at : at + 1] == "}":
        at += 1
    else:
        while True:
            name, at = _DECODER.raw_decode(text, at)
            if not isinstance(name, str) or name in body:  # a repeated key: the last wins
                raise _NotPlain
            at = _skip(text, at)
            if text[at : at + 1] != ":":
                raise _NotPlain
            at = _skip(text, at + 1)
            if name == key and text[at : at + 1] == "[":
                body[name], at = StreamedArray(text, at), _array_end(text, at)
            else:
                body[name], at = _DECODER.raw_decode(text, at)
            at = _skip(text, at)
            mark = text[at : at + 1]
            at += 1
            if mark == "}":
                break
            if mark != ",":
                raise _NotPlain
            at = _skip(text, at)
    if _skip(text, at) != len(text):
        raise _NotPlain
    return body


def loads_streaming(raw: bytes, key: str) -> Any:
    """``loads(raw)``, except that when it is an object whose ``key`` holds an array, that
    array is a ``StreamedArray`` (its ``materialized()`` is ``loads``'s list). The text is
    kept while the array is: about the size of ``raw``."""
    if _orjson_only(raw):
        return orjson.loads(raw)
    try:
        return _object_streaming(raw.decode("utf-8"), key)
    except (_NotPlain, ValueError, RecursionError):
        return loads(raw)
