# The native converter (_rows.c); see asyncsnap.rowcodec for how it is used.
from collections.abc import Sequence
from typing import Literal, overload

from typing_extensions import Buffer

def copy_to_ndjson(
    data: Buffer, kinds: bytes, prefixes: tuple[bytes, ...], /
) -> tuple[bytes, int, int]: ...
def binary_to_ndjson(
    data: Buffer, kinds: bytes, prefixes: tuple[bytes, ...], /
) -> tuple[bytes, int, int]: ...
def binary_whole(data: Buffer, /) -> int: ...
def ndjson_to_copy(
    data: Buffer, names: tuple[bytes, ...], actions: bytes, delimiters: bytes, /
) -> tuple[bytes, int]: ...
def json_string(data: Buffer, /) -> bytes: ...
def json_members(obj: Buffer, /) -> list[tuple[bytes, bytes]]: ...
def key_hash(key: Buffer, /) -> int: ...
def copy_text(rows: Sequence[Sequence[bytes | None]], /) -> bytes: ...
def pgoutput_values(
    data: Buffer, pos: int, unchanged: object, /
) -> tuple[tuple[object, ...], int]: ...
@overload
def pick_lines(
    data: Buffer, prefixes: tuple[bytes, ...], identity: tuple[int, ...], wanted: Buffer, /
) -> bytes: ...
@overload
def pick_lines(
    data: Buffer,
    prefixes: tuple[bytes, ...],
    identity: tuple[int, ...],
    wanted: Buffer,
    rest: Literal[True],
    /,
) -> tuple[bytes, bytes]: ...
def line_keys(
    data: Buffer, prefixes: tuple[bytes, ...], identity: tuple[int, ...], whole: bool, /
) -> list[bytes]: ...

class LineError(ValueError):
    what: str
    line: int  # 0-based, within the data given to the call
    column: int  # 0-based, or -1

def ndjson_to_binary(
    data: Buffer, names: tuple[bytes, ...], kinds: bytes, /
) -> tuple[bytes, int]: ...

SHA256_PATH: str  # "sha-ni" (the CPU's SHA instructions) or "evp" (OpenSSL)

def line_fingerprint(data: Buffer, /) -> tuple[int, bytes, int]: ...
def count_lines(data: Buffer, /) -> int: ...
def equal_lines(a: Buffer, a_start: int, b: Buffer, b_start: int, /) -> int: ...
def line_columns(
    data: Buffer, with_hashes: bool, with_text: bool, wanted: Buffer = ..., firsts: Buffer = ..., /
) -> tuple[int, bytes | None, bytes | None, bytes | None, bytes | None, bytes | None, int, int]: ...
