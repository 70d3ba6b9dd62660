"""Documented promises match the code: commands, exit codes, the manifest's keys."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from asyncsnap.cli.app import app
from asyncsnap.errors import ExitCode

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FORMAT = (ROOT / "docs" / "format.md").read_text()


def test_every_command_is_documented_with_an_example() -> None:
    group = typer.main.get_group(app)
    for name, command in group.commands.items():
        assert f"asyncsnap {name}" in README, name
        assert "Examples:" in (command.help or ""), name


def test_exit_code_table_matches_the_code() -> None:
    table = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", README, re.M))
    codes = {v for k, v in vars(ExitCode).items() if not k.startswith("_")}
    assert {int(c) for c in table} == codes


def test_format_documents_every_manifest_key() -> None:
    """Every key the dump writes: the top level (``_manifest_body``) and every entry's
    ``to_json`` in the format module."""
    from asyncsnap import format as manifest
    from asyncsnap.dump import _manifest_body

    source = Path(_manifest_body.__code__.co_filename).read_text()
    bodies = [source[source.index("def _manifest_body") : source.index("def _table_results")]]
    format_source = Path(manifest.__file__).read_text()
    bodies += re.findall(r"def to_json\(self\)[^\n]*\n((?:        [^\n]*\n|\n)*)", format_source)
    assert len(bodies) >= 9, "the entries' to_json methods were not found"
    keys = {k for body in bodies for k in re.findall(r'^\s+"([a-z_0-9]+)": ', body, re.M)}
    keys |= {k for body in bodies for k in re.findall(r'\{"([a-z_0-9]+)": ', body)}
    assert {"pages", "foreign_keys", "pg_dump_version", "refresh"} <= keys
    missing = sorted(k for k in keys if f"`{k}`" not in FORMAT)
    assert not missing, missing


def test_readme_setup_commands_are_the_ci_commands() -> None:
    """The set-up's second command is the test command CI runs, and CI runs the slow
    tests it leaves out too."""
    ci = (ROOT / ".ci" / "run").read_text()
    setup = README[README.index("## Set-up") : README.index("## Usage")]
    block = setup[setup.index("```sh\n") + 6 : setup.index("```", setup.index("```sh\n") + 6)]
    install, test = (line.split("#")[0].strip() for line in block.strip().splitlines())
    assert install.startswith("pip install -e '.[test]'") and "-e '.[test]'" in ci
    assert test.startswith("python -m pytest")
    commands = [line.strip() for line in ci.splitlines() if line.startswith("python -m pytest")]
    assert commands == [test, "python -m pytest -m slow"]


def test_public_api_is_callable_as_the_readme_shows() -> None:
    import asyncsnap
    import asyncsnap.cli.app  # importing submodules must not shadow the functions

    for name in ("dump", "restore", "verify"):
        assert callable(getattr(asyncsnap, name)) and f"asyncsnap.{name}(" in README, name


def test_help_texts_survive_rich_markup() -> None:
    """Square brackets in help strings are rich markup and vanish from --help."""
    group = typer.main.get_group(app)
    for name, command in group.commands.items():
        for param in command.params:
            text = getattr(param, "help", None) or ""
            assert "[" not in text, (name, param.name, text)
