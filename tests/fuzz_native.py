"""Coverage-guided fuzzing of every entry point of the native module (``asyncsnap._rows``)
with atheris (libFuzzer for Python), each against the independent reference of
``tests/test_native_fuzz.py``: a disagreement, or a crash, is a finding.

Each input seeds a valid case of the entry point (the reference's generators) and its
remaining bytes are spliced into that case, so libFuzzer's mutations start from inputs
that reach deep into the parsers. Coverage is the reference's Python and, when the module
was built with clang's ``-fsanitize=fuzzer-no-link`` and clang's libFuzzer is preloaded
(``.ci/run`` does both), the C's own edges and comparisons: on ``ndjson_to_copy``, 8
seconds reached 604 edges with them, 266 without.

    python -m tests.fuzz_native TARGET [libFuzzer flags, e.g. -max_total_time=20]
    python -m tests.fuzz_native --list

Not a pytest module (its name does not start with ``test_``).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports(include=["tests.test_native_fuzz"]):
    from tests import test_native_fuzz as ref

from asyncsnap import _rows


def _case(data: bytes) -> tuple[random.Random, bytes]:
    """A generator seeded by the input's first bytes, and the rest of the input."""
    provider = atheris.FuzzedDataProvider(data)
    rng = random.Random(provider.ConsumeInt(4))
    return rng, provider.ConsumeBytes(provider.remaining_bytes())


def _spliced(rng: random.Random, case: bytes, raw: bytes) -> bytes:
    """``raw`` put into ``case`` at a line boundary or anywhere: valid lines around the
    fuzzer's bytes."""
    if not raw:
        return case
    at = rng.randrange(len(case) + 1)
    if rng.random() < 0.5:
        at = case.rfind(b"\n", 0, at) + 1
    return case[:at] + raw + case[at:]


def copy_to_ndjson(data: bytes) -> None:
    rng, raw = _case(data)
    case, kinds, prefixes = ref.random_dump_case(rng)
    lines = _spliced(rng, case, raw)
    args = (lines, kinds, prefixes)
    ref.Tally("copy_to_ndjson").check(_rows.copy_to_ndjson, args, ref.ref_copy_to_ndjson, args)


def ndjson_to_copy(data: bytes) -> None:
    rng, raw = _case(data)
    case, names, actions = ref.random_load_case(rng, "xjtaaa")
    delimiters = bytes(rng.choice((0x2C, 0x3B, rng.randrange(1, 128))) for _ in actions)
    args = (_spliced(rng, case, raw), names, actions, delimiters)
    ref.Tally("ndjson_to_copy").check(_rows.ndjson_to_copy, args, ref.ref_ndjson_to_copy, args)


def ndjson_to_binary(data: bytes) -> None:
    rng, raw = _case(data)
    case, names, kinds = ref.random_load_case(rng, "x248sb")
    args = (_spliced(rng, case, raw), names, kinds)
    tally = ref.Tally("ndjson_to_binary")
    tally.check(_rows.ndjson_to_binary, args, ref.ref_ndjson_to_binary, args)


def json_string(data: bytes) -> None:
    ref.Tally("json_string").check(_rows.json_string, (data,), ref.json_quote, (data,))


def line_fingerprint(data: bytes) -> None:
    args = (data,)
    tally = ref.Tally("line_fingerprint")
    tally.check(_rows.line_fingerprint, args, ref.ref_line_fingerprint, args)


def line_columns(data: bytes) -> None:
    rng, raw = _case(data)
    lines = raw if raw.endswith(b"\n") or rng.random() < 0.1 else raw + b"\n"
    hashes, text = rng.random() < 0.7, rng.random() < 0.7
    args: tuple[object, ...] = (lines, hashes, text)
    if hashes and rng.random() < 0.4:
        some = [ref.term(line) >> 64 for line in lines.split(b"\n")[:-1] if rng.random() < 0.5]
        args = (*args, ref.native_uint64s(sorted(set(some))))
    ref.Tally("line_columns").check(_rows.line_columns, args, ref.ref_line_columns, args)


TARGETS: dict[str, Callable[[bytes], None]] = {
    f.__name__: f
    for f in (
        copy_to_ndjson,
        ndjson_to_copy,
        ndjson_to_binary,
        json_string,
        line_fingerprint,
        line_columns,
    )
}


def main() -> None:
    if sys.argv[1:2] == ["--list"]:
        print("\n".join(TARGETS))
        return
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        print(f"usage: python -m tests.fuzz_native {{{','.join(TARGETS)}}} [libFuzzer flags]")
        sys.exit(2)
    target = TARGETS[sys.argv[1]]
    print(f"fuzzing {target.__name__}; the module: {_rows.__file__}", file=sys.stderr)
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
