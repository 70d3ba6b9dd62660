"""Coverage-guided fuzzing of every entry point of the native module (``asyncsnap._rows``)
with atheris (libFuzzer for Python), each against the independent reference of
``tests/test_native_fuzz.py``: a disagreement, or a crash, is a finding.

Each input seeds a valid case of the entry point (the reference's generators) and its
remaining bytes are spliced into that case, so libFuzzer's mutations start from inputs
that reach deep into the parsers; the native side gets the case in every kind of buffer
(the reference's ``as_buffer``), one ending exactly where its memory ends. Coverage is the
reference's Python and, when the module was built with clang's
``-fsanitize=fuzzer-no-link`` and a libFuzzer is preloaded, the C's own edges and
comparisons (on ``ndjson_to_copy``, 8 seconds reached 604 edges with them, 266 without).

``.ci/run`` fuzzes each target twice: on a plain build (many inputs a second, the corpus
grows), then on a build with AddressSanitizer and UBSan (``ASYNCSNAP_SANITIZE=1``, with
atheris's ``asan_with_fuzzer.so`` preloaded and ``PYTHONMALLOC=malloc``) that replays
that corpus, so every input found is also checked for bad memory access, and fuzzes on.

    python -m tests.fuzz_native TARGET [CORPUS_DIR] [libFuzzer flags, e.g. -max_total_time=20]
    python -m tests.fuzz_native --list

``ASYNCSNAP_FUZZ_ROWS``, when set, names the module file the run must load, built with
libFuzzer's coverage (and, if it has AddressSanitizer's checks, with its runtime
loaded): otherwise the run stops before fuzzing, as it would test less than it says.

Not a pytest module (its name does not start with ``test_``).
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

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


def _check(name: str, rng: random.Random, reference: Callable[..., object], *args: object) -> None:
    """The entry point ``name`` on ``args`` (each bytes argument in a buffer of
    ``as_buffer``'s choice) against ``reference`` on ``args``."""
    native_args = tuple(ref.as_buffer(rng, arg) for arg in args)
    ref.Tally(name).check(getattr(_rows, name), native_args, reference, args)


def copy_to_ndjson(data: bytes) -> None:
    rng, raw = _case(data)
    case, kinds, prefixes = ref.random_dump_case(rng)
    lines = _spliced(rng, case, raw)
    _check("copy_to_ndjson", rng, ref.ref_copy_to_ndjson, lines, kinds, prefixes)


def ndjson_to_copy(data: bytes) -> None:
    rng, raw = _case(data)
    case, names, actions = ref.random_load_case(rng, "xjtaaa")
    delimiters = ref.random_delimiters(rng, len(actions))
    lines = _spliced(rng, case, raw)
    _check("ndjson_to_copy", rng, ref.ref_ndjson_to_copy, lines, names, actions, delimiters)


def ndjson_to_binary(data: bytes) -> None:
    rng, raw = _case(data)
    case, names, kinds = ref.random_load_case(rng, "x248sb")
    lines = _spliced(rng, case, raw)
    _check("ndjson_to_binary", rng, ref.ref_ndjson_to_binary, lines, names, kinds)


def binary_to_ndjson(data: bytes) -> None:
    rng, raw = _case(data)
    case, kinds, prefixes = ref.random_binary_case(rng)
    at = rng.randrange(len(case) + 1)  # the fuzzer's bytes anywhere among the tuples
    tuples = case[:at] + raw + case[at:]
    _check("binary_to_ndjson", rng, ref.ref_binary_to_ndjson, tuples, kinds, prefixes)


def binary_whole(data: bytes) -> None:
    rng, raw = _case(data)
    case = ref.random_binary_case(rng)[0]
    at = rng.randrange(len(case) + 1)
    _check("binary_whole", rng, ref.ref_binary_whole, case[:at] + raw + case[at:])


def json_string(data: bytes) -> None:
    rng, raw = _case(data)
    _check("json_string", rng, ref.json_quote, raw)


def json_members(data: bytes) -> None:
    rng, raw = _case(data)
    case = ref.random_object(rng)
    at = rng.randrange(len(case) + 1)
    _check("json_members", rng, ref.ref_json_members, case[:at] + raw + case[at:])


def pick_lines(data: bytes) -> None:
    rng, raw = _case(data)
    lines, prefixes, identity, wanted = ref.random_pick_case(rng)
    lines = _spliced(rng, lines, raw)
    rest = rng.random() < 0.5
    _check("pick_lines", rng, ref.ref_pick_lines, lines, prefixes, identity, wanted, rest)


def line_keys(data: bytes) -> None:
    rng, raw = _case(data)
    lines, prefixes, identity, _ = ref.random_pick_case(rng)
    lines = _spliced(rng, lines, raw)
    _check("line_keys", rng, ref.ref_line_keys, lines, prefixes, identity, rng.random() < 0.5)


def change_lines(data: bytes) -> None:
    rng, raw = _case(data)
    lines = _spliced(rng, ref.random_change_lines(rng), raw)
    _check("change_lines", rng, ref.ref_change_lines, lines)


def key_hash(data: bytes) -> None:
    rng, raw = _case(data)
    _check("key_hash", rng, ref.ref_key_hash, raw)


def pgoutput_values(data: bytes) -> None:
    rng, raw = _case(data)
    case, pos = ref.random_tuple_data(rng)
    at = rng.randrange(len(case) + 1)
    message = case[:at] + raw + case[at:]
    _check("pgoutput_values", rng, ref.ref_pgoutput_values, message, pos, ref.UNCHANGED_MARK)


def copy_text(data: bytes) -> None:
    rng, raw = _case(data)
    rows = ref.random_rows(rng)
    rows.insert(rng.randrange(len(rows) + 1), tuple(raw.split(b"\x00")))  # the fuzzer's
    _check("copy_text", rng, ref.ref_copy_text, rows)


def line_fingerprint(data: bytes) -> None:
    rng, raw = _case(data)
    _check("line_fingerprint", rng, ref.ref_line_fingerprint, raw)


def count_lines(data: bytes) -> None:
    rng, raw = _case(data)
    newlines = raw.replace(bytes([rng.randrange(256)]), b"\n")  # dense and sparse
    _check("count_lines", rng, lambda block: block.count(b"\n"), newlines)


def equal_lines(data: bytes) -> None:
    """Two sides that share a run of lines, then part (or not), each from some start."""
    rng, raw = _case(data)
    raw = raw.replace(bytes([rng.randrange(256)]), b"\n")  # lines, short and long
    cut = rng.randrange(len(raw) + 1)
    shared, rest = raw[:cut], raw[cut:]
    a = bytes(rng.randrange(256) for _ in range(rng.randrange(4))) + shared + rest
    tail = rest[::-1] if rng.random() < 0.5 else rest[: rng.randrange(len(rest) + 1)]
    b = shared + tail
    a_start = (
        len(a) - len(shared) - len(rest) if rng.random() < 0.9 else rng.randrange(-2, len(a) + 3)
    )
    b_start = 0 if rng.random() < 0.9 else rng.randrange(-2, len(b) + 3)
    _check("equal_lines", rng, ref.ref_equal_lines, a, a_start, b, b_start)


def line_columns(data: bytes) -> None:
    rng, raw = _case(data)
    lines = raw if raw.endswith(b"\n") or rng.random() < 0.1 else raw + b"\n"
    hashes, text = rng.random() < 0.7, rng.random() < 0.7
    if hashes and rng.random() < 0.4:
        some = [ref.term(line) >> 64 for line in lines.split(b"\n")[:-1] if rng.random() < 0.5]
        wanted = ref.native_uint64s(sorted(set(some)))
        if rng.random() < 0.5:
            firsts = ref._firsts(rng, lines)
            _check("line_columns", rng, ref.ref_line_columns, lines, hashes, text, wanted, firsts)
        else:
            _check("line_columns", rng, ref.ref_line_columns, lines, hashes, text, wanted)
    else:
        _check("line_columns", rng, ref.ref_line_columns, lines, hashes, text)


TARGETS: dict[str, Callable[[bytes], None]] = {
    f.__name__: f
    for f in (
        copy_to_ndjson,
        ndjson_to_copy,
        ndjson_to_binary,
        binary_to_ndjson,
        binary_whole,
        json_string,
        json_members,
        pick_lines,
        line_keys,
        change_lines,
        key_hash,
        pgoutput_values,
        copy_text,
        line_fingerprint,
        count_lines,
        equal_lines,
        line_columns,
    )
}


def _insist_on(expected: Path) -> None:
    """Stop unless the module loaded is ``expected``, built with libFuzzer's coverage
    (the C's edges would not guide the fuzzer), and, if it has AddressSanitizer's
    checks, with its runtime loaded."""
    loaded = Path(_rows.__file__ or "")
    binary = loaded.read_bytes()
    if loaded.resolve() != expected.resolve():
        sys.exit(f"fuzz_native: the module loaded is {loaded}, not {expected}")
    if b"__sanitizer_cov_8bit_counters_init" not in binary:
        sys.exit(f"fuzz_native: {loaded} has no libFuzzer coverage (-fsanitize=fuzzer-no-link)")
    if b"__asan_report_load" in binary and "asan" not in Path("/proc/self/maps").read_text():
        sys.exit(f"fuzz_native: {loaded} has AddressSanitizer's checks, its runtime is not loaded")


def main() -> None:
    if sys.argv[1:2] == ["--list"]:
        print("\n".join(TARGETS))
        return
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        print(f"usage: python -m tests.fuzz_native {{{','.join(TARGETS)}}} [libFuzzer flags]")
        sys.exit(2)
    target = TARGETS[sys.argv[1]]
    print(f"fuzzing {target.__name__}; the module: {_rows.__file__}", file=sys.stderr)
    expected = os.environ.get("ASYNCSNAP_FUZZ_ROWS")
    if expected is not None:
        _insist_on(Path(expected))
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
