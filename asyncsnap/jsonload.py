"""Parse a large JSON document (a manifest of ten thousand tables) with orjson's answer
and the standard library's peak memory.

orjson first builds its own document tree, then the Python objects: for a 14.5 MB
manifest the process peaked at 93 MiB, against 76 MiB for ``json.loads``, which builds
the objects as it reads (measured in a fresh interpreter, 2026-12-05; 76 ms against 87
ms). The two disagree on a few inputs, and orjson's answer is the one the format
defines (docs/format.md): ``loads`` hands those to orjson. They are

- integers of 19 digits or more (orjson makes a float of one past 64 bits; the standard
  library an exact int): any run of 19 digits in the bytes goes to orjson;
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
from typing import Any

import orjson

# Where the two parsers could disagree (see above): a false match only costs orjson's
# memory, so the patterns are wide (a digit run inside a string matches too).
_ORJSON_ONLY = re.compile(rb"[0-9]{19}|\\u[dD][89a-fA-F]")


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
    if _ORJSON_ONLY.search(raw):
        return orjson.loads(raw)
    try:
        return _DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, _Refused
        return orjson.loads(raw)
