"""A fast start (issue 24): ``asyncsnap --version``, ``--help``, a command's ``--help`` and
shell completion (one run of the program per Tab) import Typer and the command layer, and
none of the library: no asyncpg, DuckDB, pyarrow, obstore, rich or pydantic. What they
import is pinned here, by name, so that a new import shows up; how long they take is a
figure of ``python -m benchmarks`` (target 0.15 s), never a test's.

``import asyncsnap`` is as cheap: the public API is imported on first use (PEP 562), and
the functions named as submodules (``dump``, ``verify``, ``restore``) stay the functions
whichever is imported first."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import clean_env

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = (
    "dump",
    "restore",
    "compare",
    "diff",
    "convert",
    "verify",
    "prune",
    "inspect",
    "drop-slot",
)

# The modules of asyncsnap a start may import: the command layer and the ground floor.
ASYNCSNAP_AT_START = frozenset(
    {
        "asyncsnap",
        "asyncsnap.cli",
        "asyncsnap.cli.app",
        "asyncsnap.cli.options",
        "asyncsnap.cli.secrets",
        "asyncsnap.cli.startup",
        *(f"asyncsnap.cli.{command.replace('-', '_')}" for command in COMMANDS),
        "asyncsnap.errors",
        "asyncsnap.text",
        "asyncsnap.version",  # --version
        "asyncsnap.scratch",  # a command's --help: the group's callback runs before it
    }
)
# The packages outside the standard library a start may import: Typer and its own.
THIRD_PARTY_AT_START = frozenset({"asyncsnap", "typer", "shellingham", "annotated_doc"})
# Never at a start, named so that a failure says which: the library's dependencies, the
# presentation's, Typer's heavy optional paths (pydantic converts values, rich formats),
# the event loop and the installed metadata's reader.
NEVER_AT_START = (
    "asyncpg",
    "duckdb",
    "pyarrow",
    "obstore",
    "boto3",
    "rich",
    "pydantic",
    "pydantic_core",
    "anyio",
    "asyncio",
    "orjson",
    "zstandard",
    "pyrage",
    "dotenv",
    "setproctitle",
    "importlib.metadata",
    "asyncsnap.cli.envelope",
    "asyncsnap.cli.progress",
    "asyncsnap.cli.reports",
    "asyncsnap.connection",
    "asyncsnap.format",
    "asyncsnap.dump",
    "asyncsnap.api",
)

# The process runs the command's main() as the installed script does, then prints the
# modules the run imported beyond those Python itself had at start (site, .pth files).
PROBE = """
import json, sys
before = set(sys.modules)
from asyncsnap.cli.app import main
sys.argv = ["asyncsnap", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("\\nMODULES " + json.dumps(sorted(set(sys.modules) - before)))
"""


def _complete(shell: str, line: str) -> dict[str, str]:
    """The environment of a completion request, as each shell's script sets it."""
    if shell == "bash":
        words = line.split()
        cword = len(words) - (0 if line.endswith(" ") else 1)
        return {
            "_ASYNCSNAP_COMPLETE": "complete_bash",
            "COMP_WORDS": line,
            "COMP_CWORD": str(cword),
        }
    return {
        "_ASYNCSNAP_COMPLETE": f"complete_{shell}",
        "_TYPER_COMPLETE_ARGS": line,
        "_TYPER_COMPLETE_FISH_ACTION": "get-args",
    }


# Each start: its arguments, its environment, and a line its output must hold.
STARTS: dict[str, tuple[list[str], dict[str, str], str]] = {
    "--version": (["--version"], {}, "asyncsnap "),
    "--help": (["--help"], {}, "Commands"),
    **{f"{c} --help": ([c, "--help"], {}, f"Usage: asyncsnap {c}") for c in COMMANDS},
    "bash: a command": ([], _complete("bash", "asyncsnap du"), "dump"),
    "bash: an option, after a value": (
        [],
        _complete("bash", "asyncsnap dump -j 3 --co"),
        "--compress",
    ),
    "bash: a choice": ([], _complete("bash", "asyncsnap dump --compress "), "gzip"),
    "zsh: an option": ([], _complete("zsh", "asyncsnap restore x --compa"), '"--compare":"Then'),
    "fish: an option": ([], _complete("fish", "asyncsnap dump --sp"), "--split-larger-than\t"),
}


def start(args: list[str], env: dict[str, str]) -> tuple[str, list[str]]:
    """What the start printed, and the modules it imported."""
    run = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**clean_env(), "COLUMNS": "100", "TERM": "dumb", **env},
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    output, _, modules = run.stdout.rpartition("\nMODULES ")
    return output, json.loads(modules)


@pytest.mark.parametrize("name", STARTS)
def test_a_start_imports_only_typer_and_the_command_layer(name: str) -> None:
    args, env, expected = STARTS[name]
    output, modules = start(args, env)
    assert expected in output, output
    never = [m for m in modules if m.startswith(NEVER_AT_START)]
    assert never == [], f"{name} imports {never}"
    ours = sorted(m for m in modules if m.split(".")[0] == "asyncsnap")
    assert set(ours) <= ASYNCSNAP_AT_START, sorted(set(ours) - ASYNCSNAP_AT_START)
    packages = {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names)
    packages = {p for p in packages if not p.startswith("_")}  # e.g. _cffi_backend
    assert packages <= THIRD_PARTY_AT_START, sorted(packages - THIRD_PARTY_AT_START)


def test_completion_help_is_one_line_each() -> None:
    """A long help stays on its candidate's line (Typer's rich pass wrapped it at 80
    columns: fish took the rest for a candidate of its own)."""
    output, _ = start([], _complete("fish", "asyncsnap dump --split"))
    assert output.strip().splitlines() == [
        "--split-larger-than\tRead tables larger than SIZE in page ranges over several "
        "connections (e.g. 256MB, 2GB, off)."
    ]
    output, _ = start([], _complete("zsh", "asyncsnap du"))
    assert output.strip() == (
        '_arguments \'*: :(("dump":"Back up tables at one moment\\\\: NDJSON files and a '
        "manifest.\"))'"
    )


def test_given_values_are_still_converted_and_checked(tmp_path: Path) -> None:
    """Values typed on the command line go through Typer's converters as before: a number,
    a bound, a choice."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "asyncsnap", *args],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
        )

    done = run("prune", str(tmp_path), "--keep", "2", "--dry-run", "--abandoned-after", "700")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("kept 0, would remove 0"), done.stdout
    for args, message in (
        (("prune", str(tmp_path), "--keep", "x"), "Invalid value for '--keep'"),
        (("prune", str(tmp_path), "--keep", "0"), "greater than or equal to 1"),
        (("dump", "--compress", "lz4"), "'lz4' is not one of 'zstd', 'gzip', 'none'"),
    ):
        failed = run(*args)
        assert failed.returncode == 2 and message in failed.stderr, (args, failed.stderr)


def _options() -> list[tuple[typing.Any, typing.Any]]:
    """Every parameter of every command, with its command's name."""
    import typer.main

    from asyncsnap.cli.app import app

    group = typer.main.get_command(app)
    found = [(group, p) for p in group.params]
    for command in group.commands.values():  # type: ignore[attr-defined]
        found += [(command, p) for p in command.params]
    return [(c, p) for c, p in found if getattr(p, "type_descriptor", None) is not None]


OPTIONS = _options()
# Values a command line may hold for each kind: numbers in Python's and pydantic's other
# spellings, bounds, choices in other cases, argv's undecodable bytes (lone surrogates).
AWKWARD = [
    "",
    " 2",
    "2 ",
    "+2",
    "-1",
    "0",
    "1",
    "007",
    "1_0",
    "1e3",
    "2.5",
    "2.50",
    ".5",
    "5.",
    "inf",
    "nan",
    "0x10",
    "\u0662",
    "9" * 15,
    "9" * 16,
    "0.001",
    "0.0009",
    "zstd",
    "ZSTD",
    "json",
    "Json",
    "x\udcff",
    "true",
    "false",
    "s3://b/x",
    "-",
]


@pytest.mark.parametrize("command,param", OPTIONS, ids=[f"{c.name} {p.name}" for c, p in OPTIONS])
@settings(max_examples=150, deadline=None, database=None)
@given(
    value=st.one_of(
        st.sampled_from(AWKWARD),
        st.text(max_size=12),
        st.from_regex(r"[0-9]{1,17}(\.[0-9]{0,17})?", fullmatch=True),
        st.booleans(),
        st.integers(min_value=-3, max_value=10**6),
        st.floats(allow_nan=True, allow_infinity=True),
        st.lists(st.one_of(st.sampled_from(AWKWARD), st.text(max_size=6)), max_size=3).map(tuple),
    )
)
def test_a_given_value_is_what_typers_converter_makes_of_it(
    command: typing.Any, param: typing.Any, value: typing.Any
) -> None:
    """The values converted without pydantic (cli/startup.py's plain_value) are exactly
    Typer's; every value Typer refuses goes to Typer (which then says why)."""
    from typer._click import Context
    from typer._click.exceptions import BadParameter
    from typer._coercion import build_runtime_param

    from asyncsnap.cli.startup import DECLINED, plain_value

    multiple = param.multiple or param.nargs == -1
    plain = plain_value(param.type_descriptor, value, multiple=multiple)
    converter = build_runtime_param(param.type_descriptor)
    try:
        typers = converter.coerce(value, param=param, ctx=Context(command))
    except BadParameter:
        assert plain is DECLINED, (value, plain)
        return
    if plain is not DECLINED:
        assert type(plain) is type(typers) and plain == typers, (value, plain, typers)


def test_every_default_is_converted_without_pydantic() -> None:
    """Click passes each option's default through the converter whether it was given or
    not (a float default such as dump's --lock-timeout 30.0 imported pydantic for every
    dump)."""
    from asyncsnap.cli.startup import DECLINED, plain_value

    defaults = [(c.name, p) for c, p in OPTIONS if p.default is not None]
    assert len(defaults) > 20
    declined = [
        (name, p.name, p.default)
        for name, p in defaults
        if plain_value(p.type_descriptor, p.default, multiple=p.multiple or p.nargs == -1)
        is DECLINED
    ]
    assert declined == []


def test_a_command_given_plain_values_imports_no_pydantic(tmp_path: Path) -> None:
    """The values of a real command line (a number, a bound, a choice, repeated strings)
    are converted without pydantic."""
    output, modules = start(
        [
            "prune",
            str(tmp_path),
            "--keep",
            "2",
            "--dry-run",
            "--abandoned-after",
            "700.5",
        ],
        {},
    )
    assert output.startswith("kept 0, would remove 0"), output
    assert not [m for m in modules if m.startswith(("pydantic", "pydantic_core"))]


def test_the_commands_defaults_are_the_librarys() -> None:
    """--help shows defaults written out in cli/options.py, so that it imports no library
    module; they are the library's own."""
    from asyncsnap.analysis import readers
    from asyncsnap.cli import options
    from asyncsnap.dump import DEFAULT_LOCK_TIMEOUT
    from asyncsnap.format import COMPRESSIONS, Compression

    assert typing.get_args(options.Compression) == typing.get_args(Compression) == COMPRESSIONS
    assert options.DEFAULT_LOCK_TIMEOUT == DEFAULT_LOCK_TIMEOUT
    assert options.DEFAULT_MEMORY_LIMIT == readers.DEFAULT_MEMORY_LIMIT


def python(code: str) -> str:
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_import_asyncsnap_imports_nothing_else_of_it() -> None:
    found = python(
        "import sys, asyncsnap\nprint(sorted(m for m in sys.modules if m.startswith('asyncsnap')))"
    )
    assert found == "['asyncsnap']"


@pytest.mark.parametrize("first", ["submodules", "functions"])
def test_the_public_functions_win_over_their_submodules(first: str) -> None:
    """``asyncsnap.dump`` is the function, whether ``asyncsnap.dump`` the module was
    imported before it was asked for or after (the import system binds a submodule to
    its package's attribute); ``from asyncsnap import ...`` and ``dir`` see the API."""
    submodules = "import asyncsnap.dump, asyncsnap.verify, asyncsnap.restore.load, asyncsnap.api"
    functions = "found = (asyncsnap.dump, asyncsnap.verify, asyncsnap.restore)"
    code = "\n".join(
        [
            "import sys, asyncsnap",
            *([submodules, functions] if first == "submodules" else [functions, submodules]),
            "m = sys.modules",
            "assert found == (m['asyncsnap.dump'].dump, m['asyncsnap.verify'].verify,"
            " m['asyncsnap.api'].restore), found",
            "assert (asyncsnap.dump, asyncsnap.verify, asyncsnap.restore) == found",
            "from asyncsnap import dump, restore, verify",
            "assert (dump, verify, restore) == found",
            "assert all(getattr(asyncsnap, name) is not None for name in asyncsnap.__all__)",
            "assert set(asyncsnap.__all__) <= set(dir(asyncsnap))",
            "assert not hasattr(asyncsnap, 'no_such_name')",
            # a test's monkeypatch sets, then puts back
            "asyncsnap.dump = len\nassert asyncsnap.dump is len",
            "asyncsnap.dump = found[0]\nassert asyncsnap.dump is found[0]",
            "print('ok')",
        ]
    )
    assert python(code) == "ok"
