"""The native converter (``asyncsnap._rows``) against an independent reference, on random
input: whenever the C accepts an input its output must be the reference's, byte for byte,
and whenever the reference refuses one the C must raise ``ValueError`` (a ``LineError``
naming the same line), and the other way round.

The reference is written from the contracts, not from the C: docs/format.md ("Value
encodings", "Which path a column takes", "Row fingerprints"), the docstrings of
``_rows.c``/``_rows.pyi`` and its callers (``asyncsnap.rowcodec``, ``fingerprint``,
``batches``), PostgreSQL's COPY text format (its documented escapes), its ``escape_json``,
COPY's binary tuple format, RFC 8259's JSON and RFC 3629's UTF-8.

Inputs are valid lines built from random values of every kind (every byte 0-255 in
strings, long numbers, every escape form, every array delimiter), then mutated with
random bytes from the whole range 0-255, invalid UTF-8 sequences and the formats' special
tokens. The seed is new on every run and printed with any failure; set
``ASYNCSNAP_FUZZ_SEED`` to repeat a run. The native side gets its input in every kind of
buffer, one of them ending exactly where its memory ends. CI also runs this module on a
build with AddressSanitizer and UBSan (``ASYNCSNAP_SANITIZE=1``, see ``.ci/run``), and
``tests/fuzz_native.py`` fuzzes each entry point against this reference, guided by
coverage.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import random
import re
import struct
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

import pytest

from asyncsnap import _rows
from asyncsnap.chainlines import CHANGE_LINE

SEED = int(os.environ.get("ASYNCSNAP_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
ROUNDS = 1000  # inputs per converter in the default run; the slow run takes 25 times more


class Invalid(Exception):
    """The reference refuses the input; ``line`` is the 0-based line at fault (None: the
    whole data, e.g. not ending with a newline)."""

    def __init__(self, what: str, line: int | None = None) -> None:
        super().__init__(what)
        self.line = line


def rng_for(name: str) -> random.Random:
    print(f"ASYNCSNAP_FUZZ_SEED={SEED}")  # shown with a failing test's output
    return random.Random(f"{name}:{SEED}")


def shown(value: object) -> str:
    text = repr(value)
    return text if len(text) < 3000 else text[:3000] + "..."


class Tally:
    """Runs the native function and the reference on one input and fails the test unless
    they agree; counts accepted and refused inputs (a fuzz test that only ever hits one
    side tests little)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.accepted = 0
        self.refused = 0

    def check(
        self,
        native: Callable[..., object],
        native_args: tuple[Any, ...],
        reference: Callable[..., object],
        args: tuple[Any, ...],
    ) -> None:
        """``native_args`` are ``args`` (bytes) in the buffers the native function gets."""
        where = f"{self.name} (ASYNCSNAP_FUZZ_SEED={SEED}) on {shown(args)}"
        try:
            want = reference(*args)
        except Invalid as exc:
            try:
                got = native(*native_args)
            except ValueError as error:
                line = getattr(error, "line", None)
                if exc.line is not None and isinstance(error, _rows.LineError):
                    assert line == exc.line, f"{where}: refused at line {line}, not {exc.line}"
                self.refused += 1
                return
            pytest.fail(f"{where}: the reference refuses it ({exc}), _rows gives {shown(got)}")
        try:
            got = native(*native_args)
        except ValueError as error:
            pytest.fail(f"{where}: _rows refuses it ({error}), the reference gives {shown(want)}")
        assert got == want, f"{where}: _rows gives {shown(got)}, the reference {shown(want)}"
        self.accepted += 1

    def assert_both_sides(self, rounds: int) -> None:
        print(f"{self.name}: {self.accepted} accepted, {self.refused} refused")
        assert self.accepted >= rounds // 10, (self.name, self.accepted, self.refused)
        assert self.refused >= rounds // 20, (self.name, self.accepted, self.refused)


def lines_of(data: bytes) -> list[bytes]:
    """Whole lines, without their newlines; Invalid unless data ends with one."""
    if data and not data.endswith(b"\n"):
        raise Invalid("the data does not end with a whole line")
    return data.split(b"\n")[:-1] if data else []


# -- the reference: JSON strings as PostgreSQL's escape_json writes them -----------------

# escape_json: \" \\ \b \f \n \r \t, other bytes below 0x20 as \u00xx (lowercase hex),
# every other byte (UTF-8 or not) as it is.
_SHORT = {0x22: b'\\"', 0x5C: b"\\\\", 0x08: b"\\b", 0x0C: b"\\f", 0x0A: b"\\n", 0x0D: b"\\r",
          0x09: b"\\t"}  # fmt: skip
_ESCAPED = [_SHORT.get(b, b"\\u%04x" % b if b < 0x20 else bytes([b])) for b in range(256)]


def json_quote(value: bytes) -> bytes:
    return b'"' + b"".join(_ESCAPED[b] for b in value) + b'"'


JSON_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


# -- the reference: COPY text (dump) -> NDJSON ---------------------------------------------

# COPY's text format: \b \f \n \r \t \v, \ and 1-3 octal digits, \x and 1-2 hex digits,
# and a backslash before any other character stands for that character.
_COPY_ESCAPES = {ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("v"): 11}
_OCTAL = re.compile(rb"[0-7]{1,3}")
_HEX = re.compile(rb"[0-9a-fA-F]{1,2}")


def copy_fields(line: bytes) -> list[tuple[bytes, bytes]]:
    """A COPY text row (without its newline) as ``(raw, decoded)`` fields, read as COPY
    FROM reads text: a raw tab ends a field; a backslash escapes the next character (an
    escaped tab is data). A backslash at the end of the row would escape its newline, which
    COPY TO never writes (a newline in a value is ``\\n``): refused."""
    fields = []
    value = bytearray()
    start = i = 0
    while i < len(line):
        c = line[i]
        i += 1
        if c == 0x09:
            fields.append((line[start : i - 1], bytes(value)))
            value = bytearray()
            start = i
        elif c != 0x5C:
            value.append(c)
        elif i == len(line):
            raise Invalid("a backslash escapes the row's newline")
        elif (octal := _OCTAL.match(line, i)) is not None:
            value.append(int(octal.group(), 8) & 0xFF)
            i = octal.end()
        elif line[i] == ord("x") and (hexa := _HEX.match(line, i + 1)) is not None:
            value.append(int(hexa.group(), 16))
            i = hexa.end()
        else:
            value.append(_COPY_ESCAPES.get(line[i], line[i]))
            i += 1
    fields.append((line[start:], bytes(value)))
    return fields


# The ISO DateStyle's timestamps: YYYY[Y...]-MM-DD HH:MM:SS[.f...], for timestamptz with
# the offset +hh, +hh:mm or +hh:mm:ss, then " BC" for years before 1.
_TIMESTAMP = re.compile(rb"([0-9]{4,}-[0-9]{2}-[0-9]{2}) ([0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?)")
_OFFSET = re.compile(rb"[+-][0-9]{2}((?::[0-9]{2}){0,2})")


def to_json_timestamp(text: bytes, with_zone: bool) -> bytes:
    """to_json's rendering (XSD style): "T" between date and time, the offset always with
    its minutes."""
    if text in (b"infinity", b"-infinity"):
        return b'"' + text + b'"'
    stamp = _TIMESTAMP.match(text)
    if stamp is None:
        raise Invalid("not a timestamp of the ISO DateStyle")
    out = stamp.group(1) + b"T" + stamp.group(2)
    rest = text[stamp.end() :]
    if with_zone:
        offset = _OFFSET.match(rest)
        if offset is None:
            raise Invalid("a timestamptz without its offset")
        out += offset.group() + (b"" if offset.group(1) else b":00")
        rest = rest[offset.end() :]
    if rest not in (b"", b" BC"):
        raise Invalid("more after a timestamp")
    return b'"' + out + rest + b'"'


def dump_value(kind: str, raw: bytes, value: bytes) -> bytes:
    """One COPY field as the JSON value docs/format.md's table says the dump writes."""
    if raw == b"\\N":
        return b"null"
    if kind == "s":
        return json_quote(value)
    if kind == "r":  # JSON the server rendered: as it is, on one line
        if not value or b"\n" in value or b"\r" in value:
            raise Invalid("not a server-rendered JSON value")
        return value
    if b"\\" in raw:  # numbers, booleans and timestamps are printed without escapes
        raise Invalid(f"an escape in a field of kind {kind}")
    if kind in "nf":
        if JSON_NUMBER.fullmatch(raw) and not (kind == "f" and raw == b"-0"):
            return raw
        return json_quote(raw)  # NaN, Infinity, -Infinity; -0 of a float
    if kind == "b":
        if raw not in (b"t", b"f"):
            raise Invalid("not a boolean")
        return b"true" if raw == b"t" else b"false"
    if kind in "tz":
        return to_json_timestamp(raw, kind == "z")
    raise AssertionError(kind)


def ref_copy_to_ndjson(
    data: bytes, kinds: bytes, prefixes: tuple[bytes, ...]
) -> tuple[bytes, int, int]:
    out = []
    for number, line in enumerate(lines_of(data)):
        try:
            if not kinds:
                if line:
                    raise Invalid("a row of a table without columns has a value")
                json_line = b"{}\n"
            else:
                fields = copy_fields(line)
                if len(fields) != len(kinds):
                    raise Invalid("the row has a different number of columns")
                json_line = (
                    b"".join(
                        prefix + dump_value(chr(kind), raw, value)
                        for kind, prefix, (raw, value) in zip(kinds, prefixes, fields, strict=True)
                    )
                    + b"}\n"
                )
        except Invalid as exc:
            raise Invalid(str(exc), number) from None
        out.append(json_line)
    return b"".join(out), len(out), max(map(len, out), default=0)


# -- the reference: NDJSON lines (restore) -------------------------------------------------

# A parsed JSON value: ("string", its UTF-8 bytes), ("number", its text), ("literal",
# b"true" / b"false" / b"null"), ("array", [values]) or ("object", [(key bytes, value)]).
Value: TypeAlias = tuple[str, Any]

MAX_LEVEL = 64  # a line's values nest 64 levels deep at most (a column's value is level 0)
_WHITESPACE = b" \t\r"  # JSON's whitespace; a newline ends the line
_STRING_ESCAPES = {ord('"'): '"', ord("\\"): "\\", ord("/"): "/", ord("b"): "\b",
                   ord("f"): "\f", ord("n"): "\n", ord("r"): "\r", ord("t"): "\t"}  # fmt: skip
_PLAIN = re.compile(rb'[^"\\\x00-\x1f]*')


class JsonLine:
    """RFC 8259 JSON, with what PostgreSQL's JSON input refuses refused too: a lone UTF-16
    surrogate escape, ``\\u0000`` (text cannot hold it), and bytes that are not UTF-8."""

    def __init__(self, line: bytes) -> None:
        self.s = line
        self.i = 0

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in _WHITESPACE:
            self.i += 1

    def expect(self, token: bytes) -> None:
        self.ws()
        if not self.s.startswith(token, self.i):
            raise Invalid(f"expected {token!r} at {self.i}")
        self.i += len(token)

    def peek(self) -> int:
        self.ws()
        if self.i >= len(self.s):
            raise Invalid("the line ends early")
        return self.s[self.i]

    def line_object(self) -> list[tuple[bytes, Value]]:
        value = self.value(-1)
        self.ws()
        if value[0] != "object" or self.i != len(self.s):
            raise Invalid("a line is not one JSON object")
        return list(value[1])

    def value(self, level: int) -> Value:
        if level > MAX_LEVEL:
            raise Invalid("nested too deeply")
        c = self.peek()
        if c == ord('"'):
            return ("string", self.string())
        if c in b"[{":
            self.i += 1
            items: list[Any] = []
            close = b"]" if c == ord("[") else b"}"
            if self.peek() == close[0]:
                self.i += 1
                return ("array" if close == b"]" else "object", items)
            while True:
                if close == b"]":
                    items.append(self.value(level + 1))
                else:
                    if self.peek() != ord('"'):
                        raise Invalid("expected a key")
                    key = self.string()
                    self.expect(b":")
                    items.append((key, self.value(level + 1)))
                if self.peek() == close[0]:
                    self.i += 1
                    return ("array" if close == b"]" else "object", items)
                self.expect(b",")
        for word in (b"true", b"false", b"null"):
            if self.s.startswith(word, self.i):
                self.i += len(word)
                return ("literal", word)
        number = JSON_NUMBER.match(self.s, self.i)
        if number is None:
            raise Invalid("not a JSON value")
        self.i = number.end()
        return ("number", number.group())

    def string(self) -> bytes:
        self.i += 1
        text: list[str] = []
        while True:
            plain = _PLAIN.match(self.s, self.i)
            assert plain is not None
            try:
                text.append(plain.group().decode("utf-8"))
            except UnicodeDecodeError:
                raise Invalid("a string is not UTF-8") from None
            self.i = plain.end()
            if self.i >= len(self.s):
                raise Invalid("a string is not closed")
            c = self.s[self.i]
            self.i += 1
            if c == ord('"'):
                return "".join(text).encode()
            if c != ord("\\"):
                raise Invalid("a control character in a string")
            if self.i >= len(self.s):
                raise Invalid("a string is not closed")
            c = self.s[self.i]
            self.i += 1
            if c in _STRING_ESCAPES:
                text.append(_STRING_ESCAPES[c])
                continue
            if c != ord("u"):
                raise Invalid("an invalid escape")
            code = self.hex4()
            if 0xD800 <= code < 0xDC00:
                if not self.s.startswith(b"\\u", self.i):
                    raise Invalid("a lone surrogate")
                self.i += 2
                low = self.hex4()
                if not 0xDC00 <= low < 0xE000:
                    raise Invalid("a lone surrogate")
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
            elif 0xDC00 <= code < 0xE000:
                raise Invalid("a lone surrogate")
            if code == 0:
                raise Invalid("\\u0000")
            text.append(chr(code))

    def hex4(self) -> int:
        digits = self.s[self.i : self.i + 4]
        if not re.fullmatch(rb"[0-9a-fA-F]{4}", digits):
            raise Invalid("a \\u escape without four hex digits")
        self.i += 4
        return int(digits, 16)


def line_values(line: bytes, names: tuple[bytes, ...]) -> list[Value]:
    """The values of a line whose keys are ``names`` in order, and nothing else."""
    members = JsonLine(line).line_object()
    if [key for key, _ in members] != list(names):
        raise Invalid("the keys are not the manifest's columns in its order")
    return [value for _, value in members]


def copy_escape(value: bytes) -> bytes:
    """What COPY FROM's text format needs escaped in a value: backslash, newline, carriage
    return and its delimiter, the tab."""
    return (
        value.replace(b"\\", b"\\\\")
        .replace(b"\n", b"\\n")
        .replace(b"\r", b"\\r")
        .replace(b"\t", b"\\t")
    )


def array_literal(items: list[Value], delimiter: bytes, dimension: int) -> bytes:
    """array_in's input for a JSON array: elements quoted (a backslash before ``"`` and
    ``\\``), NULL for null, numbers and true/false as they are, the element type's
    delimiter between; at most 6 dimensions (MAXDIM), no objects."""
    if dimension > 6:
        raise Invalid("an array with more than 6 dimensions")
    out = []
    for kind, item in items:
        if kind == "array":
            out.append(array_literal(item, delimiter, dimension + 1))
        elif kind == "string":
            out.append(b'"' + item.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"')
        elif kind == "literal":
            out.append(b"NULL" if item == b"null" else item)
        elif kind == "number":
            out.append(item)
        else:
            raise Invalid("an object inside an array")
    return b"{" + delimiter.join(out) + b"}"


def copy_value(action: str, delimiter: bytes, value: Value) -> bytes:
    """A column's JSON value as COPY text, as json_to_recordset handed it to the type's
    input function: a string's decoded text, a number's or true/false's token."""
    kind, item = value
    if value == ("literal", b"null"):
        return b"\\N"
    if kind == "string":
        return copy_escape(item)
    if action == "j" and kind in ("number", "literal"):
        return bytes(item)
    if action == "a" and kind == "array":
        return copy_escape(array_literal(item, delimiter, 1))
    raise Invalid(f"a {kind} in a column of encoding {action}")


def ref_ndjson_to_copy(
    data: bytes, names: tuple[bytes, ...], actions: bytes, delimiters: bytes
) -> tuple[bytes, int]:
    out = []
    for number, line in enumerate(lines_of(data)):
        try:
            values = line_values(line, names)
            out.append(
                b"\t".join(
                    copy_value(chr(action), bytes([delimiter]), value)
                    for action, delimiter, value in zip(actions, delimiters, values, strict=True)
                    if action != ord("x")
                )
                + b"\n"
            )
        except Invalid as exc:
            raise Invalid(str(exc), number) from None
    return b"".join(out), len(out)


_INTEGER = re.compile(rb"-?(?:0|[1-9][0-9]*)")


def binary_value(kind: str, value: Value) -> bytes:
    """One field of COPY's binary tuple format: a 32-bit length (-1: NULL) and the type's
    send format: big-endian two's complement integers, a text's bytes, a boolean's byte."""
    tag, item = value
    if value == ("literal", b"null"):
        return struct.pack(">i", -1)
    if kind in "248":
        size = int(kind)
        if tag != "number" or not _INTEGER.fullmatch(item):
            raise Invalid("expected an integer")
        number = int(item)
        if not -(2 ** (8 * size - 1)) <= number < 2 ** (8 * size - 1):
            raise Invalid("an integer out of its column's range")
        return struct.pack(">i", size) + number.to_bytes(size, "big", signed=True)
    if kind == "s" and tag == "string":
        return struct.pack(">i", len(item)) + bytes(item)
    if kind == "b" and value in (("literal", b"true"), ("literal", b"false")):
        return struct.pack(">i", 1) + (b"\x01" if item == b"true" else b"\x00")
    raise Invalid(f"a {tag} in a column of kind {kind}")


def ref_ndjson_to_binary(data: bytes, names: tuple[bytes, ...], kinds: bytes) -> tuple[bytes, int]:
    fields = sum(kind != ord("x") for kind in kinds)
    out = []
    for number, line in enumerate(lines_of(data)):
        try:
            values = line_values(line, names)
            out.append(
                struct.pack(">h", fields)
                + b"".join(
                    binary_value(chr(kind), value)
                    for kind, value in zip(kinds, values, strict=True)
                    if kind != ord("x")
                )
            )
        except Invalid as exc:
            raise Invalid(str(exc), number) from None
    return b"".join(out), len(out)


# -- the reference: fingerprints and Arrow columns -----------------------------------------


def term(line: bytes) -> int:
    """docs/format.md, "Row fingerprints": a line's first 16 bytes of SHA-256, big-endian."""
    return int.from_bytes(hashlib.sha256(line).digest()[:16], "big")


def ref_equal_lines(a: bytes, a_start: int, b: bytes, b_start: int) -> int:
    """The bytes of the run of whole lines that ``a[a_start:]`` and ``b[b_start:]`` both
    begin with, a line at a time."""
    if not (0 <= a_start <= len(a) and 0 <= b_start <= len(b)):
        raise Invalid("a start outside its buffer")
    run = 0
    while (end := a.find(b"\n", a_start + run)) >= 0:
        line = a[a_start + run : end + 1]
        if b[b_start + run : b_start + run + len(line)] != line:
            break
        run += len(line)
    return run


def ref_line_fingerprint(data: bytes) -> tuple[int, bytes, int]:
    *whole, rest = data.split(b"\n")
    total = sum(map(term, whole)) % 2**128
    return len(whole), total.to_bytes(16, "big"), len(data) - len(rest)


def native_uint64s(values: list[int]) -> bytes:
    return struct.pack(f"={len(values)}Q", *values)


def ref_line_columns(
    data: bytes,
    hashes: bool,
    text: bool,
    wanted: bytes | None = None,
    firsts: bytes | None = None,
) -> tuple[object, ...]:
    if wanted is not None and (not hashes or len(wanted) % 8):
        raise Invalid("wanted needs hashes and a whole number of uint64s")
    lines = lines_of(data)
    if firsts is not None and (wanted is None or len(firsts) != 8 * len(lines)):
        raise Invalid("firsts needs wanted and one uint64 a line")
    chosen = None if wanted is None else set(struct.unpack(f"={len(wanted) // 8}Q", wanted))
    known = None if firsts is None else struct.unpack(f"={len(lines)}Q", firsts)
    kept = [
        (number, line)
        for number, line in enumerate(lines)
        if chosen is None
        or ((known is None or known[number] in chosen) and term(line) >> 64 in chosen)
    ]
    if text:
        for number, line in kept:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                raise Invalid("not UTF-8", number) from None
    terms = [term(line) for _, line in kept]
    offsets = [0]
    for _, line in kept:
        offsets.append(offsets[-1] + len(line))
    return (
        len(kept),
        native_uint64s([t >> 64 for t in terms]) if hashes else None,
        native_uint64s([t & (2**64 - 1) for t in terms]) if hashes else None,
        (sum(terms) % 2**128).to_bytes(16, "big") if hashes else None,
        struct.pack(f"={len(offsets)}q", *offsets) if text else None,
        b"".join(line for _, line in kept) if text else None,
        max((len(line) for _, line in kept), default=0),
        len(lines),
    )


# -- random input ----------------------------------------------------------------------------

INVALID_UTF8 = [
    b"\x80",  # a continuation byte alone
    b"\xbf\xbf",
    b"\xc0\x80",  # overlong NUL
    b"\xc1\xbf",
    b"\xe0\x80\xaf",  # overlong
    b"\xc3",  # cut short
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xed\xa0\x80",  # a UTF-16 surrogate in UTF-8
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf5\x80\x80\x80",
    b"\xfe",
    b"\xff",
]
LONG_DIGITS = [b"9" * 400, b"1" + b"0" * 2000, b"3" * 20]
COPY_TOKENS = [
    b"\\", b"\t", b"\n", b"\r", b"\\N", b"\\x", b"\\x4", b"\\0", b"\\177", b"\\400", b"\\t",
    b"\\\n", b"-", b"0", b"e", b"E+", b".", b" BC", b"+00", b":", b" ", b"T", b"Infinity",
    *LONG_DIGITS, *INVALID_UTF8,
]  # fmt: skip
JSON_TOKENS = [
    b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"\\u", b"\\ud800", b"\\udc00",
    b"\\ud83d\\ude00", b"\\u0000", b"\\/", b"\\x", b"null", b"true", b"false", b"-", b"0",
    b"e", b"E-", b".", b"+", b" ", b"\t", b"\r", b"\n", b"\x00", b"\x1f", b"\x7f",
    b"[" * 70, b"]" * 7, b'"c0":', *LONG_DIGITS, *INVALID_UTF8,
]  # fmt: skip


def mutate(rng: random.Random, data: bytes, tokens: list[bytes]) -> bytes:
    """A few random changes (none for about one input in four): a byte of 0-255 replaced
    or inserted, a byte deleted, a token inserted, a piece repeated; newline-terminated
    but for a few."""
    out = bytearray(data)
    for _ in range(rng.choice((0, 0, 1, 1, 1, 2, 3, 6))):
        at = rng.randrange(len(out) + 1)
        action = rng.randrange(6)
        if action == 0 and at < len(out):
            out[at] = rng.randrange(256)
        elif action == 1 and at < len(out):
            del out[at]
        elif action == 2:
            out[at:at] = bytes([rng.randrange(256)])
        elif action == 3:
            start = rng.randrange(len(out) + 1)
            out[at:at] = out[start : start + rng.randrange(1, 30)]
        else:
            out[at:at] = rng.choice(tokens)
    if rng.random() < 0.97 and not out.endswith(b"\n"):
        out += b"\n"
    return bytes(out)


def exact_buffer(data: bytes) -> Any:
    """A copy of data in a buffer whose memory ends where the data ends. bytes and
    bytearray keep a NUL after their data, so a read one byte past the end goes unseen;
    ctypes allocates an array of more than 16 bytes at exactly its size, so where Python
    takes its memory from malloc (``PYTHONMALLOC=malloc``, as ``.ci/run`` runs the
    sanitized builds) AddressSanitizer reports that read."""
    return (ctypes.c_char * len(data)).from_buffer_copy(data)


def as_buffer(rng: random.Random, data: Any) -> Any:
    """The same bytes as bytes, a bytearray, a memoryview (the functions take any buffer;
    the converters get memoryviews of blocks) or an exact buffer (``exact_buffer``)."""
    choice = rng.randrange(4)
    if choice == 0 or not isinstance(data, bytes):
        return data
    if choice == 1:
        return bytearray(data)
    if choice == 2:
        return memoryview(b"?" + data)[1:]
    return exact_buffer(data)


def random_text(rng: random.Random, size: int | None = None) -> str:
    """Characters of every class: ASCII, controls, quote and backslash, DEL, Latin, the
    BMP's top, astral; no surrogates (they are not characters) and no NUL."""
    pools = [
        lambda: chr(rng.randrange(0x20, 0x7F)),
        lambda: chr(rng.randrange(1, 0x20)),
        lambda: rng.choice('"\\/{}[],:\x7f'),
        lambda: chr(rng.randrange(0x80, 0x800)),
        lambda: chr(rng.choice((0x2028, 0xFEFF, 0xFFFD, 0xFFFF, rng.randrange(0xE000, 0x10000)))),
        lambda: chr(rng.randrange(0x10000, 0x110000)),
    ]
    count = rng.choice((0, 1, 3, 10, 40)) if size is None else size
    return "".join(rng.choice(pools)() for _ in range(count))


def random_bytes(rng: random.Random) -> bytes:
    """A text value's bytes: UTF-8 text, or any bytes at all (the dump passes them on)."""
    if rng.random() < 0.7:
        return random_text(rng).encode()
    return bytes(rng.randrange(256) for _ in range(rng.choice((1, 5, 30))))


def random_number(rng: random.Random) -> bytes:
    """Number texts as int2/4/8, numeric and float4/8 print them, and some they do not."""
    digits = (
        "".join(
            rng.choice("0123456789") for _ in range(rng.choice((1, 2, 5, 19, 30, 300, 1500)))
        ).lstrip("0")
        or "0"
    )
    sign = rng.choice(("", "", "-"))
    return rng.choice(
        [
            f"{sign}{digits}",
            f"{sign}{digits}.{digits[::-1]}",
            f"{sign}{digits[:1]}.{digits[1:3] or '0'}e{rng.choice('+-')}{rng.randrange(400)}",
            f"{digits[:1]}E{rng.randrange(40)}",
            repr(rng.uniform(-1e6, 1e6)),
            repr(rng.random() * 10.0 ** rng.randrange(-320, 309)),
            rng.choice(("NaN", "Infinity", "-Infinity", "-0", "0", "0.000", "1e-310")),
            rng.choice(("007", ".5", "1.", "+1", "1e", "--1", "0x1F", "1_000", " 1")),
            str(rng.choice((-(2**15), 2**15 - 1, -(2**31), 2**31 - 1, -(2**63), 2**63 - 1))),
            str(rng.choice((2**15, -(2**15) - 1, 2**31, -(2**31) - 1, 2**63, -(2**63) - 1))),
        ]
    ).encode()


def random_timestamp(rng: random.Random, with_zone: bool) -> bytes:
    if rng.random() < 0.05:
        return rng.choice((b"infinity", b"-infinity"))
    year = str(rng.choice((rng.randrange(1, 10000), rng.randrange(10000, 294277)))).zfill(4)
    text = (
        f"{year}-{rng.randrange(1, 13):02}-{rng.randrange(1, 29):02} "
        f"{rng.randrange(24):02}:{rng.randrange(60):02}:{rng.randrange(60):02}"
    )
    if rng.random() < 0.5:
        text += "." + str(rng.randrange(1, 10**6)).zfill(6).rstrip("0")
    if with_zone:
        text += f"{rng.choice('+-')}{rng.randrange(16):02}"
        minutes, seconds = f":{rng.randrange(60):02}", f":{rng.randrange(1, 60):02}"
        text += rng.choice(("", "", minutes, minutes + seconds))
    if rng.random() < 0.1:
        text += " BC"
    return text.encode()


# COPY TO's escapes: a backslash, and the control characters with a letter
_COPY_TO_ESCAPES = {0x5C: b"\\\\", 8: b"\\b", 12: b"\\f", 10: b"\\n", 13: b"\\r", 9: b"\\t",
                    11: b"\\v"}  # fmt: skip


def copy_text(rng: random.Random, value: bytes) -> bytes:
    """A value in COPY text as COPY TO writes it, or now and then in the other escapes
    COPY text has (octal, hex, a backslash before a plain character)."""
    out = []
    for byte in value:
        if byte in _COPY_TO_ESCAPES:
            out.append(_COPY_TO_ESCAPES[byte])
        elif rng.random() < 0.03:
            out.append(rng.choice((b"\\%o" % byte, b"\\%03o" % byte, b"\\x%x" % byte)))
        elif rng.random() < 0.01 and byte not in b"01234567xbfnrtvN":
            out.append(b"\\" + bytes([byte]))
        else:
            out.append(bytes([byte]))
    return b"".join(out)


def random_json_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return random_text(rng)
    if choice == 1:
        return rng.choice((None, True, False))
    if choice in (2, 3):
        return rng.choice((rng.randrange(-(10**20), 10**20), rng.uniform(-1e9, 1e9), 0, -1))
    if choice in (4, 5):
        return random_text(rng, 3)
    if choice == 6:
        return [random_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if choice == 7:
        return {random_text(rng, 2): random_json_value(rng, depth + 1) for _ in range(3)}
    return [[random_json_value(rng, depth + 2)]]


def random_dump_field(rng: random.Random, kind: str) -> bytes:
    if rng.random() < 0.1:
        return b"\\N"
    if kind in "nf":
        return random_number(rng)
    if kind == "b":
        return rng.choice((b"t", b"f"))
    if kind in "tz":
        return random_timestamp(rng, kind == "z")
    if kind == "s":
        return copy_text(rng, random_bytes(rng))
    rendered = json.dumps(random_json_value(rng), ensure_ascii=rng.random() < 0.5)
    return copy_text(rng, rendered.encode("utf-8", "surrogatepass"))


def random_name(rng: random.Random) -> bytes:
    return rng.choice((b"id", b"c0", b"", b"a b", random_text(rng, 4).encode()))


def random_dump_case(rng: random.Random) -> tuple[bytes, bytes, tuple[bytes, ...]]:
    kinds = "".join(rng.choice("nfbstzr") for _ in range(rng.choice((0, 1, 1, 2, 3, 6))))
    names = [random_name(rng) for _ in kinds]
    prefixes = tuple((b"{" if i == 0 else b",") + json_quote(n) + b":" for i, n in enumerate(names))
    rows = [
        b"\t".join(random_dump_field(rng, kind) for kind in kinds) + b"\n"
        for _ in range(rng.choice((0, 1, 1, 2, 4)))
    ]
    return mutate(rng, b"".join(rows), COPY_TOKENS), kinds.encode(), prefixes


def ws(rng: random.Random) -> bytes:
    return rng.choice((b"", b"", b"", b"", b" ", b"\t", b"\r", b"  \t "))


def json_string(rng: random.Random, value: str) -> bytes:
    """A JSON string for ``value``, each character in one of the forms JSON allows."""
    out = [b'"']
    for char in value:
        code = ord(char)
        if char in '"\\' or code < 0x20:
            short = {'"': b'\\"', "\\": b"\\\\", "\b": b"\\b", "\f": b"\\f", "\n": b"\\n",
                     "\r": b"\\r", "\t": b"\\t"}.get(char)  # fmt: skip
            out.append(short if short and rng.random() < 0.7 else b"\\u%04x" % code)
        elif char == "/" and rng.random() < 0.5:
            out.append(b"\\/")
        elif rng.random() < 0.1:
            units = char.encode("utf-16-be")
            hexa = rng.choice(("%04x", "%04X"))
            out.extend(
                b"\\u" + (hexa % int.from_bytes(units[k : k + 2], "big")).encode()
                for k in range(0, len(units), 2)
            )
        else:
            out.append(char.encode())
    out.append(b'"')
    return b"".join(out)


def json_text(rng: random.Random, value: Any) -> bytes:
    """``value`` as JSON, with random whitespace and escapes."""
    if isinstance(value, str):
        return json_string(rng, value)
    if isinstance(value, bytes):  # a number's text, as it is
        return value
    if isinstance(value, list):
        inner = b",".join(ws(rng) + json_text(rng, v) + ws(rng) for v in value)
        return b"[" + (inner or ws(rng)) + b"]"
    if isinstance(value, dict):
        inner = b",".join(
            ws(rng) + json_string(rng, k) + ws(rng) + b":" + ws(rng) + json_text(rng, v) + ws(rng)
            for k, v in value.items()
        )
        return b"{" + (inner or ws(rng)) + b"}"
    return json.dumps(value).encode()


def random_json_number(rng: random.Random) -> bytes:
    number = random_number(rng)
    return number if JSON_NUMBER.fullmatch(number) else b"-12"


def random_array(rng: random.Random, dimensions: int) -> list[Any]:
    items: list[Any] = []
    for _ in range(rng.choice((0, 1, 2, 3))):
        if dimensions > 1 and rng.random() < 0.8:
            items.append(random_array(rng, dimensions - 1))
        else:
            items.append(rng.choice((None, True, False, random_json_number(rng), random_text(rng))))
    return items


def random_column_value(rng: random.Random, action: str) -> Any:
    """A value of the JSON kind a dump writes for the column, most of the time."""
    if rng.random() < 0.1:
        return None
    if rng.random() < 0.04:  # of another kind
        return random_json_value(rng)
    if action in "t":
        return random_text(rng)
    if action == "j":
        return rng.choice((random_json_number(rng), random_text(rng), True, False))
    if action == "a":
        if rng.random() < 0.2:
            return random_text(rng)
        return random_array(rng, rng.choice((1, 1, 2, 3, 6, 7)))
    if action in "248":
        size = int(action)
        return str(rng.randrange(-(2 ** (8 * size - 1)), 2 ** (8 * size - 1))).encode()
    if action == "b":
        return rng.random() < 0.5
    if action == "s":
        return random_text(rng)
    if rng.random() < 0.05:  # x: deep
        return [[[[[[]]]]]] * 2 if rng.random() < 0.5 else json.loads("[" * 66 + "]" * 66)
    return random_json_value(rng)


def random_line(rng: random.Random, names: list[bytes], actions: str) -> bytes:
    members = []
    for name, action in zip(names, actions, strict=True):
        key = json_string(rng, name.decode())
        value = json_text(rng, random_column_value(rng, action))
        members.append(ws(rng) + key + ws(rng) + b":" + ws(rng) + value + ws(rng))
    return ws(rng) + b"{" + (b",".join(members) or ws(rng)) + b"}" + ws(rng) + b"\n"


def random_load_case(rng: random.Random, letters: str) -> tuple[bytes, tuple[bytes, ...], bytes]:
    actions = "".join(rng.choice(letters) for _ in range(rng.choice((0, 1, 1, 2, 3, 6))))
    names = [random_name(rng) for _ in actions]
    lines = b"".join(random_line(rng, names, actions) for _ in range(rng.choice((0, 1, 1, 2, 3))))
    return mutate(rng, lines, JSON_TOKENS), tuple(names), actions.encode()


def random_delimiters(rng: random.Random, count: int) -> bytes:
    """Every delimiter an array's type can have that is one byte in UTF-8."""
    return bytes(
        rng.choice((0x2C, 0x3B, rng.randrange(1, 128), rng.choice(b'\t\\\n\r"{} ')))
        for _ in range(count)
    )


# -- the tests -------------------------------------------------------------------------------


def fuzz_copy_to_ndjson(rounds: int) -> None:
    rng = rng_for("copy_to_ndjson")
    tally = Tally("copy_to_ndjson")
    for _ in range(rounds):
        data, kinds, prefixes = random_dump_case(rng)
        args = (data, kinds, prefixes)
        native_args = (as_buffer(rng, data), kinds, prefixes)
        tally.check(_rows.copy_to_ndjson, native_args, ref_copy_to_ndjson, args)
    tally.assert_both_sides(rounds)


def fuzz_ndjson_to_copy(rounds: int) -> None:
    rng = rng_for("ndjson_to_copy")
    tally = Tally("ndjson_to_copy")
    for _ in range(rounds):
        data, names, actions = random_load_case(rng, "xjtaaa")
        delimiters = random_delimiters(rng, len(actions))
        args = (data, names, actions, delimiters)
        native_args = (as_buffer(rng, data), names, actions, delimiters)
        tally.check(_rows.ndjson_to_copy, native_args, ref_ndjson_to_copy, args)
    tally.assert_both_sides(rounds)


def fuzz_ndjson_to_binary(rounds: int) -> None:
    rng = rng_for("ndjson_to_binary")
    tally = Tally("ndjson_to_binary")
    for _ in range(rounds):
        data, names, kinds = random_load_case(rng, "x248sb")
        args = (data, names, kinds)
        native_args = (as_buffer(rng, data), names, kinds)
        tally.check(_rows.ndjson_to_binary, native_args, ref_ndjson_to_binary, args)
    tally.assert_both_sides(rounds)


def random_lines(rng: random.Random) -> bytes:
    """Lines of every length SHA-256's padding cares about, valid UTF-8 or not."""
    choice = rng.randrange(4)
    if choice == 0:
        return random_load_case(rng, "xjta")[0]
    if choice == 1:
        return mutate(rng, random_text(rng).encode() + b"\n", INVALID_UTF8)
    if choice == 2:
        return b"".join(
            bytes(rng.randrange(256) for _ in range(rng.randrange(130))).replace(b"\n", b"") + b"\n"
            for _ in range(rng.randrange(4))
        )
    return b"\n" * rng.randrange(3) + b"x" * rng.choice((55, 56, 63, 64, 119, 120, 1000)) + b"\n"


def _firsts(rng: random.Random, data: bytes) -> bytes:
    """A first pass's record of each line's first 8 bytes of SHA-256: mostly the lines'
    own, some entries another line's or random (a file changed between the passes), and
    now and then one entry too many or too few."""
    values = [term(line) >> 64 for line in data.split(b"\n")[:-1]]
    for i in range(len(values)):
        if rng.random() < 0.15:
            values[i] = rng.choice([rng.randrange(2**64), *values])
    if rng.random() < 0.03:
        values = values[:-1] if values and rng.random() < 0.5 else [*values, 0]
    return native_uint64s(values)


def fuzz_lines(rounds: int) -> None:
    rng = rng_for("lines")
    fingerprints, columns = Tally("line_fingerprint"), Tally("line_columns")
    for _ in range(rounds):
        data = random_lines(rng)
        fingerprints.check(
            _rows.line_fingerprint, (as_buffer(rng, data),), ref_line_fingerprint, (data,)
        )
        hashes, text = rng.random() < 0.7, rng.random() < 0.7
        wanted = None
        if rng.random() < 0.4:
            some = [term(line) >> 64 for line in data.split(b"\n")[:-1] if rng.random() < 0.5]
            some += [rng.randrange(2**64) for _ in range(rng.randrange(3))]
            wanted = native_uint64s(sorted(set(some)))
        if rng.random() < 0.02 and wanted:
            wanted += b"\x00"  # not whole uint64s
        args: tuple[object, ...] = (data, hashes, text)
        if wanted is not None:
            args = (*args, wanted)
            if rng.random() < 0.5:  # the first pass's record: true, or some entries wrong
                args = (*args, _firsts(rng, data))
        native_args = tuple(as_buffer(rng, a) for a in args)
        columns.check(_rows.line_columns, native_args, ref_line_columns, args)
    print(f"line_fingerprint: {fingerprints.accepted} inputs")
    assert fingerprints.accepted == rounds
    columns.assert_both_sides(rounds)


def fuzz_json_string(rounds: int) -> None:
    rng = rng_for("json_string")
    tally = Tally("json_string")
    for _ in range(rounds):
        value = random_bytes(rng) if rng.random() < 0.5 else bytes(rng.sample(range(256), 256))
        tally.check(_rows.json_string, (as_buffer(rng, value),), json_quote, (value,))
    assert tally.accepted == rounds


# -- the reference: an object of column values' members (chain diff) ---------------------
# docs/format.md: a line is ``{``, ``"name":value`` members joined by ``,``, then ``}``; a
# value is a string, a bare scalar or an array of those, nested as deep as PostgreSQL's
# arrays go (six dimensions; one more is still read). Written as the grammar's regular
# expressions, the way the chain's diff read objects before the native reader.
_MEMBER_STRING = rb'"(?:[^"\\]++|\\.)*+"'
_MEMBER_SCALAR = rb'[^",\[\]{}]++'


def _member_array(depth: int) -> bytes:
    inner = _MEMBER_STRING + b"|" + _MEMBER_SCALAR
    if depth > 1:
        inner += b"|" + _member_array(depth - 1)
    return rb"\[(?:(?:" + inner + rb")(?:,(?:" + inner + rb"))*+)?\]"


_MEMBER = re.compile(
    rb"[{,](" + _MEMBER_STRING + rb"):("
    + _MEMBER_STRING + b"|" + _MEMBER_SCALAR + b"|" + _member_array(7) + rb")"
)  # fmt: skip


def ref_json_members(obj: bytes) -> list[tuple[bytes, bytes]]:
    """Each member's name (without its quotes) and value, as written; Invalid unless
    ``obj`` is such an object."""
    if not obj.startswith(b"{") or not obj.endswith(b"}") or len(obj) < 2:
        raise Invalid("not an object")
    if obj == b"{}":
        return []
    members: list[tuple[bytes, bytes]] = []
    at, end = 0, len(obj) - 1
    while at < end:
        m = _MEMBER.match(obj, at)
        if m is None or obj[at] != (0x7B if at == 0 else 0x2C):  # ``{`` first, then ``,``
            raise Invalid(f"no member at {at}")
        members.append((m.group(1)[1:-1], m.group(2)))
        at = m.end()
    if at != end:
        raise Invalid("not one object")
    return members


def random_object(rng: random.Random) -> bytes:
    """An object of column values as a backup's line holds it (a change's key or row),
    of every value kind, mutated now and then."""
    names = [random_name(rng) for _ in range(rng.choice((0, 1, 1, 2, 3, 6)))]
    actions = [rng.choice("248bsjax") for _ in names]
    values = [json_text(rng, random_column_value(rng, a)) for a in actions]
    obj = (
        b"{"
        + b",".join(json_quote(n) + b":" + v for n, v in zip(names, values, strict=True))
        + b"}"
    )
    return mutate(rng, obj, JSON_TOKENS).removesuffix(b"\n") if rng.random() < 0.4 else obj


# -- the reference: a full backup's lines picked by their identity (chain diff) ---------
_MASK64 = 2**64 - 1
_MEMBER_VALUE = re.compile(_MEMBER_STRING + b"|" + _MEMBER_SCALAR + b"|" + _member_array(7))


def ref_key_hash(key: bytes) -> int:
    """FNV-1a (64 bits) over the key's bytes, then splitmix64's finalizer."""
    h = 0xCBF29CE484222325
    for byte in key:
        h = ((h ^ byte) * 0x100000001B3) & _MASK64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
    return h ^ (h >> 31)


def ref_pick_lines(
    data: bytes,
    prefixes: tuple[bytes, ...],
    identity: tuple[int, ...],
    wanted: bytes,
    rest: bool = False,
) -> bytes | tuple[bytes, bytes]:
    """The lines whose key (the identity's values, as written, joined by NUL) hashes to
    one of ``wanted``; each line read member by member, by the grammar, as far as the key
    needs: Invalid at the first line whose members do not begin with ``prefixes``. With
    ``rest``, those and the other lines, each in order."""
    if len(wanted) % 8 or not identity or any(not 0 <= i < len(prefixes) for i in identity):
        raise Invalid("not the arguments asked for")
    if not all(type(p) is bytes for p in prefixes[: max(identity) + 1]):
        raise TypeError("prefixes are bytes")
    hashes = set(struct.unpack(f"={len(wanted) // 8}Q", wanted))
    out, others = [], []
    for number, line in enumerate(lines_of(data)):
        values, at = [], 0
        for prefix in prefixes[: max(identity) + 1]:
            if not line.startswith(prefix, at):
                raise Invalid("not the table's columns", number)
            m = _MEMBER_VALUE.match(line, at + len(prefix))
            if m is None:
                raise Invalid("not a value", number)
            values.append(m.group())
            at = m.end()
        if ref_key_hash(b"\0".join(values[i] for i in identity)) in hashes:
            out.append(line + b"\n")
        else:
            others.append(line + b"\n")
    return (b"".join(out), b"".join(others)) if rest else b"".join(out)


# -- the reference: change lines (an increment's files) ---------------------------------
def ref_change_lines(data: bytes) -> list[tuple[bytes, int, bytes | None, bytes | None, bytes]]:
    """Each line read by ``chainlines.CHANGE_LINE`` (the format's regular expression):
    Invalid at the first line it does not match whole."""
    out = []
    for number, line in enumerate(lines_of(data)):
        m = CHANGE_LINE.fullmatch(line)
        if m is None:
            raise Invalid("not a change line", number)
        op, high, low, key, row, unchanged = m.groups()
        lsn = int(high, 16) << 32 | int(low, 16)
        out.append(
            (op, lsn, None if key == b"null" else key, None if row == b"null" else row, unchanged)
        )
    return out


def random_change_lines(rng: random.Random) -> bytes:
    """Change lines as an increment writes them (objects of every value kind, LSNs and
    numbers of every length), their parts now and then not as it writes them, mutated now
    and then."""

    def hexes() -> bytes:
        digits = "".join(rng.choice("0123456789ABCDEF") for _ in range(rng.choice((1, 2, 8))))
        if rng.random() < 0.03:
            digits = rng.choice(("", "123456789", "1a", "G", "-1"))
        return digits.encode()

    lines = []
    for _ in range(rng.choice((0, 1, 2, 3, 8))):
        op = rng.choice((b"insert", b"update", b"delete", b"truncate"))
        if rng.random() < 0.03:
            op = rng.choice((b"", b"Insert", b"upsert", b"insert ", b"trunc"))
        key = b"null" if rng.random() < 0.3 else random_object(rng)
        row = b"null" if rng.random() < 0.3 else random_object(rng)
        unchanged = rng.choice((b"[]", b"[]", b'["a","b"]', b'["]}"]', b"[", b"]", b"[}]"))
        numbers = [str(rng.choice((0, 7, 2**31, 2**70))).encode() for _ in range(2)]
        if rng.random() < 0.03:
            numbers[rng.randrange(2)] = rng.choice((b"", b"-1", b"1.5", b"null"))
        lines.append(
            b'{"op":"%s","lsn":"%s/%s","xid":%s,"n":%s,"key":%s,"row":%s,"unchanged":%s}\n'
            % (op, hexes(), hexes(), numbers[0], numbers[1], key, row, unchanged)
        )
    data = b"".join(lines)
    if rng.random() < 0.3:
        data = mutate(rng, data, [*JSON_TOKENS, b"null", b'"op":', b"},"])
    return data


def ref_line_keys(
    data: bytes, prefixes: tuple[bytes, ...], identity: tuple[int, ...], whole: bool
) -> list[bytes]:
    """Each line's key as ``ref_pick_lines`` reads it; with ``whole``, a line must be
    exactly the members ``prefixes`` begin: Invalid at the first line that is not so."""
    if not identity or any(not 0 <= i < len(prefixes) for i in identity):
        raise Invalid("not the arguments asked for")
    need = len(prefixes) if whole else max(identity) + 1
    if not all(type(p) is bytes for p in prefixes[:need]):
        raise TypeError("prefixes are bytes")
    keys = []
    for number, line in enumerate(lines_of(data)):
        values, at = [], 0
        for prefix in prefixes[:need]:
            if not line.startswith(prefix, at):
                raise Invalid("not the key's columns", number)
            m = _MEMBER_VALUE.match(line, at + len(prefix))
            if m is None:
                raise Invalid("not a value", number)
            values.append(m.group())
            at = m.end()
        if whole and line[at:] != b"}":
            raise Invalid("more than the key's columns", number)
        keys.append(b"\0".join(values[i] for i in identity))
    return keys


def random_pick_case(
    rng: random.Random,
) -> tuple[bytes, tuple[bytes, ...], tuple[int, ...], bytes]:
    """Lines of a table's columns (every value kind), an identity of some of them in any
    order, and the hashes of some lines' keys (and of none): mutated now and then."""
    names = [random_name(rng) for _ in range(rng.choice((1, 1, 2, 3, 6)))]
    prefixes = tuple((b"{" if i == 0 else b",") + json_quote(n) + b":" for i, n in enumerate(names))
    identity = tuple(rng.sample(range(len(names)), rng.randrange(1, len(names) + 1)))
    if rng.random() < 0.02:
        identity = rng.choice(((), (len(names),), (-1,), (2**63,), (2**70,)))
    lines, hashes = [], []
    for _ in range(rng.choice((0, 1, 2, 3, 8))):
        actions = [rng.choice("248bsjax") for _ in names]
        values = [json_text(rng, random_column_value(rng, a)) for a in actions]
        lines.append(b"".join(p + v for p, v in zip(prefixes, values, strict=True)) + b"}\n")
        if identity and max(identity) < len(values) and rng.random() < 0.5:
            hashes.append(ref_key_hash(b"\0".join(values[i] for i in identity)))
    hashes += [rng.randrange(2**64) for _ in range(rng.randrange(3))]
    wanted = native_uint64s(sorted(set(hashes)))
    if rng.random() < 0.02:
        wanted += b"\x00"
    data = b"".join(lines)
    if rng.random() < 0.3:
        data = mutate(rng, data, JSON_TOKENS)
    return data, prefixes, identity, wanted


# -- the reference: a row's values as pgoutput sends them (increments) ------------------
# PostgreSQL's logical replication protocol, message formats, "TupleData": Int16 the
# number of columns, then for each a Byte1 'n' (NULL), 'u' (an unchanged TOASTed value),
# or 't' (text: Int32 length, then that many bytes) or 'b' (binary, never asked for).
UNCHANGED_MARK = object()


def ref_pgoutput_values(data: bytes, pos: int, unchanged: object) -> tuple[tuple[Any, ...], int]:
    def take(size: int) -> bytes:
        nonlocal pos
        if pos < 0 or pos + size > len(data):
            raise Invalid(f"cut short at byte {pos}")
        got = data[pos : pos + size]
        pos += size
        return got

    (count,) = struct.unpack("!h", take(2))
    if count < 0:
        raise Invalid(f"a row of {count} columns")
    values: list[Any] = []
    for _ in range(count):
        kind = take(1)
        if kind == b"t":
            (length,) = struct.unpack("!i", take(4))
            if length < 0 or pos + length > len(data):
                raise Invalid(f"a value of {length} bytes past the message's end")
            values.append(take(length))
        elif kind in (b"n", b"u"):
            values.append(None if kind == b"n" else unchanged)
        else:
            raise Invalid(f"a column value of kind {kind.decode('latin-1')!r}")
    return tuple(values), pos


def random_tuple_data(rng: random.Random) -> tuple[bytes, int]:
    """A message's bytes holding a row's values at some position: every kind, every
    length, valid or not, cut short or followed by more."""
    head = bytes(rng.randrange(256) for _ in range(rng.choice((0, 0, 1, 5))))
    count = rng.choice((0, 1, 2, 3, 7, -1, 300, 32767, -32768))
    body = bytearray(struct.pack("!h", count))
    for _ in range(max(0, min(count, 8))):
        kind = rng.choice(b"tttnu" + bytes([rng.randrange(256)]))
        body.append(kind)
        if kind == ord("t"):
            value = random_bytes(rng)[: rng.choice((0, 1, 10, 1000))]
            length = len(value) if rng.random() < 0.9 else rng.choice((-1, -5, 2**31 - 1))
            body += struct.pack("!i", length) + value
    data = head + bytes(body)
    if rng.random() < 0.2:
        data = data[: rng.randrange(len(data) + 1)]
    elif rng.random() < 0.2:
        data += bytes(rng.randrange(256) for _ in range(rng.randrange(4)))
    pos = len(head) if rng.random() < 0.95 else rng.randrange(-1, len(data) + 2)
    return data, pos


# -- the reference: rows as lines of COPY's text format (increments) --------------------
# COPY TO's text format: fields separated by tabs, NULL as \N, a backslash and the
# characters \b \f \n \r \t \v written as those escapes; a newline ends each row.
_COPY_TO_ESCAPES = {0x5C: b"\\\\", 8: b"\\b", 12: b"\\f", 10: b"\\n", 13: b"\\r", 9: b"\\t",
                    11: b"\\v"}  # fmt: skip


def ref_copy_text(rows: list[Any]) -> bytes:
    return b"".join(
        b"\t".join(
            b"\\N" if v is None else b"".join(_COPY_TO_ESCAPES.get(c, bytes([c])) for c in v)
            for v in row
        )
        + b"\n"
        for row in rows
    )


def random_rows(rng: random.Random) -> list[Any]:
    """Rows (tuples or lists) of values of every byte and NULLs."""
    rows: list[Any] = []
    for _ in range(rng.choice((0, 1, 2, 5))):
        row = [None if rng.random() < 0.15 else random_bytes(rng) for _ in range(rng.randrange(5))]
        rows.append(tuple(row) if rng.random() < 0.5 else row)
    return rows


# -- the reference: COPY binary tuples (dump) -> NDJSON --------------------------------------
# The kinds whose rendering is plain enough to state again here; numbers with a
# renderer of their own (numeric, floats, timestamps, dates, times, intervals) are held
# against the server's text in tests/test_binary_copy.py.
BINARY_KINDS = "248bsxujr"
_INT_SIZES = {"2": 2, "4": 4, "8": 8}


def ref_binary_whole(data: bytes) -> int:
    """Where the whole tuples of COPY binary data end: after the trailer (-1) when it
    is there, else after the last tuple whose every field arrived."""
    i = 0
    while i + 2 <= len(data):
        fields = int.from_bytes(data[i : i + 2], "big", signed=True)
        j = i + 2
        if fields == -1:
            return j
        for _ in range(max(fields, 0)):
            if j + 4 > len(data):
                return i
            length = int.from_bytes(data[j : j + 4], "big", signed=True)
            j += 4
            if length > 0:
                if length > len(data) - j:
                    return i
                j += length
        i = j
    return i


def binary_json_value(kind: str, field: bytes) -> bytes:
    """One binary field's JSON, as docs/format.md says the dump writes the type's value."""
    if kind in _INT_SIZES:
        if len(field) != _INT_SIZES[kind]:
            raise Invalid("an integer of another size")
        return str(int.from_bytes(field, "big", signed=True)).encode()
    if kind == "b":
        if field not in (b"\x00", b"\x01"):
            raise Invalid("not a boolean")
        return b"true" if field == b"\x01" else b"false"
    if kind == "s":
        return json_quote(field)
    if kind == "x":
        return b'"\\\\x' + field.hex().encode() + b'"'
    if kind == "u":
        if len(field) != 16:
            raise Invalid("not a uuid")
        return b'"' + str(uuid.UUID(bytes=field)).encode() + b'"'
    if kind == "j":
        if not field or field[0] != 1:
            raise Invalid("not jsonb version 1")
        return json_quote(field[1:])
    if kind == "r":  # JSON the server rendered, sent as text: as it is, on one line
        if not field or b"\n" in field or b"\r" in field:
            raise Invalid("not a server-rendered JSON value")
        return field
    raise AssertionError(kind)


def ref_binary_to_ndjson(
    data: bytes, kinds: bytes, prefixes: tuple[bytes, ...]
) -> tuple[bytes, int, int]:
    """Whole COPY binary tuples (after the header; the trailer may end them) as NDJSON
    lines: ``(ndjson, rows, longest line)``."""
    out, i, rows, longest = [], 0, 0, 0
    while i < len(data):
        if i + 2 > len(data):
            raise Invalid("the tuple ends early", rows)
        fields = int.from_bytes(data[i : i + 2], "big", signed=True)
        i += 2
        if fields == -1:
            if i != len(data):
                raise Invalid("data after the end of the COPY", rows)
            break
        if fields != len(kinds):
            raise Invalid("another number of columns", rows)
        line = []
        for col, kind in enumerate(kinds.decode()):
            if i + 4 > len(data):
                raise Invalid("the tuple ends early", rows)
            length = int.from_bytes(data[i : i + 4], "big", signed=True)
            i += 4
            if length < -1 or length > len(data) - i:
                raise Invalid("the tuple ends early", rows)
            line.append(prefixes[col])
            if length == -1:
                line.append(b"null")
                continue
            field = data[i : i + length]
            i += length
            try:
                line.append(binary_json_value(kind, field))
            except Invalid as exc:
                raise Invalid(str(exc), rows) from None
        line.append(b"}\n" if kinds else b"{}\n")
        text = b"".join(line)
        out.append(text)
        longest = max(longest, len(text))
        rows += 1
    return b"".join(out), rows, longest


def random_binary_field(rng: random.Random, kind: str) -> bytes:
    """A field of ``kind`` (its length first), NULL now and then, a wrong size rarely."""
    if rng.random() < 0.1:
        return b"\xff\xff\xff\xff"
    if kind in _INT_SIZES:
        size = _INT_SIZES[kind] if rng.random() < 0.95 else rng.choice((1, 2, 4, 8))
        value = rng.choice((0, -1, 1, 2 ** (8 * size - 1) - 1, -(2 ** (8 * size - 1))))
        value = (
            value
            if rng.random() < 0.5
            else rng.randrange(-(2 ** (8 * size - 1)), 2 ** (8 * size - 1))
        )
        raw = value.to_bytes(size, "big", signed=True)
    elif kind == "b":
        raw = bytes([rng.choice((0, 1, 1, 0, 2))])
    elif kind == "u":
        raw = bytes(rng.randrange(256) for _ in range(rng.choice((16, 16, 16, 15))))
    elif kind == "x":
        raw = random_bytes(rng)
    elif kind == "j":
        raw = bytes([rng.choice((1, 1, 1, 2))]) + random_text(rng).encode()
    elif kind == "r":
        raw = json.dumps(random_json_value(rng), ensure_ascii=False).encode()
        if rng.random() < 0.05:
            raw += rng.choice((b"\n", b"\r", b""))
    else:
        raw = random_text(rng).encode() if rng.random() < 0.8 else random_bytes(rng)
    return len(raw).to_bytes(4, "big", signed=True) + raw


def random_binary_case(rng: random.Random) -> tuple[bytes, bytes, tuple[bytes, ...]]:
    kinds = "".join(rng.choice(BINARY_KINDS) for _ in range(rng.choice((0, 1, 1, 2, 3, 6))))
    names = [random_name(rng) for _ in kinds]
    prefixes = tuple((b"{" if i == 0 else b",") + json_quote(n) + b":" for i, n in enumerate(names))
    tuples = [
        len(kinds).to_bytes(2, "big") + b"".join(random_binary_field(rng, k) for k in kinds)
        for _ in range(rng.choice((0, 1, 1, 2, 4)))
    ]
    data = b"".join(tuples) + (b"\xff\xff" if rng.random() < 0.5 else b"")
    out = bytearray(data)
    for _ in range(rng.choice((0, 0, 0, 1, 1, 2))):  # a byte changed, cut or added
        at = rng.randrange(len(out) + 1)
        action = rng.randrange(3)
        if action == 0 and at < len(out):
            out[at] = rng.randrange(256)
        elif action == 1:
            del out[at:]
        else:
            out[at:at] = bytes([rng.randrange(256)])
    return bytes(out), kinds.encode(), prefixes


def fuzz_binary_to_ndjson(rounds: int) -> None:
    rng = rng_for("binary_to_ndjson")
    tally, whole = Tally("binary_to_ndjson"), Tally("binary_whole")
    for _ in range(rounds):
        data, kinds, prefixes = random_binary_case(rng)
        native_args = (as_buffer(rng, data), kinds, prefixes)
        tally.check(
            _rows.binary_to_ndjson, native_args, ref_binary_to_ndjson, (data, kinds, prefixes)
        )
        whole.check(_rows.binary_whole, (as_buffer(rng, data),), ref_binary_whole, (data,))
    tally.assert_both_sides(rounds)
    assert whole.accepted == rounds


def fuzz_json_members(rounds: int) -> None:
    rng = rng_for("json_members")
    tally = Tally("json_members")
    for _ in range(rounds):
        obj = random_object(rng)
        tally.check(_rows.json_members, (as_buffer(rng, obj),), ref_json_members, (obj,))
    tally.assert_both_sides(rounds)


def fuzz_pick_lines(rounds: int) -> None:
    rng = rng_for("pick_lines")
    tally, hashes = Tally("pick_lines"), Tally("key_hash")
    for _ in range(rounds):
        data, prefixes, identity, wanted = random_pick_case(rng)
        rest = rng.random() < 0.5  # the other lines too, as a chain's restore asks
        args = (data, prefixes, identity, wanted, rest)
        native = (as_buffer(rng, data), prefixes, identity, as_buffer(rng, wanted), rest)
        tally.check(_rows.pick_lines, native, ref_pick_lines, args)
        key = random_bytes(rng)
        hashes.check(_rows.key_hash, (as_buffer(rng, key),), ref_key_hash, (key,))
    tally.assert_both_sides(rounds)
    assert hashes.accepted == rounds


def fuzz_change_lines(rounds: int) -> None:
    rng = rng_for("change_lines")
    tally = Tally("change_lines")
    for _ in range(rounds):
        data = random_change_lines(rng)
        tally.check(_rows.change_lines, (as_buffer(rng, data),), ref_change_lines, (data,))
    tally.assert_both_sides(rounds)


def fuzz_line_keys(rounds: int) -> None:
    rng = rng_for("line_keys")
    tally = Tally("line_keys")
    for _ in range(rounds):
        data, prefixes, identity, _ = random_pick_case(rng)
        whole = rng.random() < 0.5
        if whole and rng.random() < 0.3:  # the lines' members, or fewer: refused
            prefixes = prefixes[: rng.randrange(1, len(prefixes) + 1)]
        args = (data, prefixes, identity, whole)
        native = (as_buffer(rng, data), prefixes, identity, whole)
        tally.check(_rows.line_keys, native, ref_line_keys, args)
    tally.assert_both_sides(rounds)


def fuzz_pgoutput_values(rounds: int) -> None:
    rng = rng_for("pgoutput_values")
    tally = Tally("pgoutput_values")
    for _ in range(rounds):
        data, pos = random_tuple_data(rng)
        native_args = (as_buffer(rng, data), pos, UNCHANGED_MARK)
        tally.check(
            _rows.pgoutput_values, native_args, ref_pgoutput_values, (data, pos, UNCHANGED_MARK)
        )
    tally.assert_both_sides(rounds)


def fuzz_copy_text(rounds: int) -> None:
    rng = rng_for("copy_text")
    tally = Tally("copy_text")
    for _ in range(rounds):
        rows = random_rows(rng)
        tally.check(_rows.copy_text, (rows,), ref_copy_text, (rows,))
    assert tally.accepted == rounds


FUZZERS = [
    fuzz_copy_to_ndjson,
    fuzz_ndjson_to_copy,
    fuzz_ndjson_to_binary,
    fuzz_binary_to_ndjson,
    fuzz_lines,
    fuzz_json_string,
    fuzz_json_members,
    fuzz_pick_lines,
    fuzz_line_keys,
    fuzz_change_lines,
    fuzz_pgoutput_values,
    fuzz_copy_text,
]


@pytest.mark.parametrize("fuzz", FUZZERS, ids=lambda f: f.__name__.removeprefix("fuzz_"))
def test_native_agrees_with_the_reference(fuzz: Callable[[int], None]) -> None:
    fuzz(ROUNDS)


@pytest.mark.slow
@pytest.mark.parametrize("fuzz", FUZZERS, ids=lambda f: f.__name__.removeprefix("fuzz_"))
def test_native_agrees_with_the_reference_at_length(fuzz: Callable[[int], None]) -> None:
    fuzz(ROUNDS * 25)


def test_reference_knows_the_documented_examples() -> None:
    """The reference itself, on examples from docs/format.md and tests/test_fastpath.py
    (so a wrong reference cannot agree with a wrong converter unnoticed)."""
    prefixes = (b'{"a":', b',"b":')
    assert ref_copy_to_ndjson(b"-0\t2024-01-01 10:00:00+05\n", b"fz", prefixes) == (
        b'{"a":"-0","b":"2024-01-01T10:00:00+05:00"}\n',
        1,
        43,
    )
    assert ref_copy_to_ndjson(b"NaN\ta\\101\\x42\\x4\\7\\\\\\q\\v\n", b"ns", prefixes)[0] == (
        b'{"a":"NaN","b":"aAB\\u0004\\u0007\\\\q\\u000b"}\n'
    )
    line = b'{"a":[[1,null],["a\\"b\\\\c","NULL"]],"b":"t\\tab\\u00e9"}\n'
    assert ref_ndjson_to_copy(line, (b"a", b"b"), b"at", b";,") == (
        b'{{1;NULL};{"a\\\\"b\\\\\\\\c";"NULL"}}\tt\\tab\xc3\xa9\n',
        1,
    )
    assert ref_ndjson_to_binary(b'{"a":-32768,"b":true}\n', (b"a", b"b"), b"2b") == (
        b"\x00\x02\x00\x00\x00\x02\x80\x00\x00\x00\x00\x01\x01",
        1,
    )
    tuple_ = (
        b"\x00\x05"
        + b"\x00\x00\x00\x04\xff\xff\xff\xfe"  # int4 -2
        + b"\x00\x00\x00\x01\x01"  # true
        + b'\x00\x00\x00\x02a"'  # text a"
        + b"\x00\x00\x00\x02\x00\xff"  # bytea
        + b"\xff\xff\xff\xff"  # NULL uuid
    )
    names = tuple((b"{" if i == 0 else b",") + b'"%c":' % c for i, c in enumerate(b"abcde"))
    line = b'{"a":-2,"b":true,"c":"a\\"","d":"\\\\x00ff","e":null}\n'
    assert ref_binary_to_ndjson(tuple_ + b"\xff\xff", b"4bsxu", names) == (line, 1, len(line))
    assert ref_binary_whole(tuple_ + tuple_[:-3]) == len(tuple_)
    assert ref_binary_whole(tuple_ + b"\xff\xff" + b"junk") == len(tuple_) + 2
    assert json_quote(b'\x01"\\\n\x7f\xc3\xa9') == b'"\\u0001\\"\\\\\\n\x7f\xc3\xa9"'
    assert ref_json_members(b'{"a":[["x,\\"",null]],"b":-1.5e3,"":"}"}') == [
        (b"a", b'[["x,\\"",null]]'),
        (b"b", b"-1.5e3"),
        (b"", b'"}"'),
    ]
    assert ref_json_members(b"{}") == []
    mark = UNCHANGED_MARK
    values = b"\x00\x03t\x00\x00\x00\x02abnu"  # 3 columns: "ab", NULL, unchanged
    assert ref_pgoutput_values(b"I" + values + b"!", 1, mark) == ((b"ab", None, mark), 12)
    for cut in (values[:-1], values[:5], b"\x00\x01b"):
        with pytest.raises(Invalid):
            ref_pgoutput_values(cut, 0, mark)
    assert ref_copy_text([(b"a\\b\t", None), [], (b"",)]) == b"a\\\\b\\t\t\\N\n\n\n"
    assert ref_key_hash(b"") == 0xF52A15E9A9B5E89B  # FNV-1a's offset basis, finalized
    prefixes = (b'{"a":', b',"b":')
    line = b'{"a":["x,\\"",[1]],"b":"k"}\n'
    assert ref_pick_lines(line, prefixes, (1,), native_uint64s([ref_key_hash(b'"k"')])) == line
    assert ref_pick_lines(line, prefixes, (0,), native_uint64s([ref_key_hash(b'"k"')])) == b""
    with pytest.raises(Invalid):
        ref_pick_lines(b'{"b":1}\n', prefixes, (1,), b"")
    for bad in (b'{"a":{"b":1}}', b'{"a":1,}', b'{"a" :1}', b'{"a":1}}', b"{", b"{" + b"[" * 8):
        with pytest.raises(Invalid):
            ref_json_members(bad)
    for bad in (b'{"a":"\\ud800"}\n', b'{"a":"\xc0\x80"}\n', b'{"a":"\\u0000"}\n', b'{"a":01}\n'):
        with pytest.raises(Invalid):
            ref_ndjson_to_copy(bad, (b"a",), b"x", b",")


def test_the_module_under_test_is_the_one_asked_for() -> None:
    """CI runs this module again on a build with AddressSanitizer and UBSan and names its
    file in ``ASYNCSNAP_SANITIZED_ROWS`` (``.ci/run``): that must be the module these tests
    called, instrumented, with the sanitizer's runtime loaded, or the sanitized run would
    test nothing new."""
    print(f"asyncsnap._rows is {_rows.__file__}; ASYNCSNAP_FUZZ_SEED={SEED}")
    expected = os.environ.get("ASYNCSNAP_SANITIZED_ROWS")
    if expected is None:
        return
    loaded = Path(_rows.__file__ or "")
    assert loaded.resolve() == Path(expected).resolve()
    binary = loaded.read_bytes()
    assert b"__asan_report_load" in binary and b"__ubsan_handle_" in binary
    assert "libasan" in Path("/proc/self/maps").read_text()
