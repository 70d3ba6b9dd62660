"""The command's Typer classes, for a fast start: ``--help`` and shell completion (a run of
the program per Tab) need neither pydantic nor rich, and Typer 0.29 alone imports both.

Values: Typer converts each parameter's value with a pydantic ``TypeAdapter``, built the
first time the parameter is processed; the first build imports pydantic (about 60 ms on
the 2-core machine), each costs about a millisecond more. Click processes every parameter
of each command on the way to the one run, given or not, so ``asyncsnap dump --help``
built the group's (all unset) and a completion (``asyncsnap dump --co<Tab>``) all 35 of
dump's, converting nothing. Here a parameter's converter is built when a value needs it:
an unset parameter's None becomes what Typer makes of it (None, or () for a repeatable
one) without one, and while a command line is completed (Click's resilient parsing, whose
values nothing of asyncsnap reads: no option has a completion callback) values stay as
typed. A given value of the plain kinds asyncsnap's options have (a string, a flag, a
list of strings, a decimal number within its bounds, one of a choice's values) is
converted here, to what Typer's converter returns for it; anything else (a bad number, a
bound missed, a path, a string that is not UTF-8) goes to Typer's converter, for its
answer and its error message. Pydantic costs every command that is given a value about 60
ms and 6 MiB of peak RSS (measured: ``TypeAdapter(int)`` in a fresh interpreter, 23.3
against 17.0 MiB), which issue 24's 64 MiB restore could not spare;
tests/test_fast_start.py holds this conversion to Typer's on random values.

Completion help: for zsh, fish and PowerShell Typer passes each option's help through
rich to remove rich markup, whatever the app's markup mode: that imports rich (about
120 ms) and wraps the text at 80 columns, which breaks a long help into a second, bogus
candidate. asyncsnap's help is plain text (``rich_markup_mode=None``; tests/test_docs.py
keeps brackets out of it), so here it goes to the shell as it is.

This leans on Typer's internals (``_TyperParameter._runtime_param``, ``RuntimeParam``, the
completion classes): pyproject pins Typer below 0.30, and tests/test_fast_start.py fails
if a release brings pydantic or rich back into these starts.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from typer._click import Context, Parameter
from typer._click.shell_completion import CompletionItem, add_completion_class
from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
from typer._completion_classes import FishComplete, PowerShellComplete, ZshComplete
from typer.core import TyperCommand, TyperGroup, _TyperParameter
from typer.models import ParameterInfo


@dataclass(frozen=True)
class _Deferred(RuntimeParam):
    """A parameter's converter until a value needs one; then Typer's, built once."""

    descriptor: TypeDescriptor

    def coerce(self, value: Any, param: _TyperParameter, ctx: Context) -> Any:
        if value is None:  # Typer's own answer for an unset value needs no converter
            return super().coerce(value, param=param, ctx=ctx)
        if ctx.resilient_parsing:  # completing a command line: nothing reads the value
            return value
        plain = plain_value(self.descriptor, value, multiple=param.multiple or param.nargs == -1)
        if plain is not DECLINED:
            return plain
        built = build_runtime_param(self.descriptor)
        param._runtime_param = built
        return built.coerce(value, param=param, ctx=ctx)

    def _coerce_value(self, value: Any, param: _TyperParameter, ctx: Context) -> Any:
        raise AssertionError("coerce converts with Typer's own converter")  # pragma: no cover


DECLINED = object()  # plain_value's answer for a value Typer's converter must see
_DIGITS = re.compile(r"[0-9]{1,15}")
_DECIMAL = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,15})?")


def _text(value: object) -> bool:
    """A str pydantic takes as it is: UTF-8 (argv's undecodable bytes arrive as lone
    surrogates, which pydantic refuses)."""
    if type(value) is not str:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def plain_value(descriptor: TypeDescriptor, value: Any, *, multiple: bool) -> Any:
    """``value`` (given, not None) as Typer's converter would return it, for the plain
    kinds; ``DECLINED`` for every other value, which then goes to Typer's converter."""
    info = descriptor.parameter_info
    annotation = descriptor.annotation
    if info.parser is not None or descriptor.is_file or descriptor.is_path:
        return DECLINED
    if descriptor.is_list:
        if annotation != list[str] or not isinstance(value, (list, tuple)):
            return DECLINED
        return list(value) if all(_text(v) for v in value) else DECLINED
    if multiple or descriptor.is_tuple:
        return DECLINED
    if annotation is bool:
        return value if type(value) is bool else DECLINED
    if annotation in (int, float) and type(value) is annotation:  # a default, as written
        return _bounded(value, info)
    if not _text(value):
        return DECLINED
    if descriptor.is_choice:
        choices = descriptor.choices or ()
        if not info.case_sensitive or not all(type(c) is str for c in choices):
            return DECLINED
        return value if value in choices else DECLINED
    if annotation is str:
        return value
    if annotation is int and _DIGITS.fullmatch(value):
        number: int | float = int(value)
    elif annotation is float and _DECIMAL.fullmatch(value):
        number = float(value)
    else:
        return DECLINED
    return _bounded(number, info)


def _bounded(number: float, info: ParameterInfo) -> Any:
    """``number`` if it is within the option's bounds, else ``DECLINED`` (Typer says
    which bound it missed)."""
    if info.clamp or number != number:  # NaN: Typer's answer, whatever it is
        return DECLINED
    if info.min is not None and number < info.min:
        return DECLINED
    if info.max is not None and number > info.max:
        return DECLINED
    return number


def _defer(params: list[Parameter]) -> list[Parameter]:
    for param in params:
        if isinstance(param, _TyperParameter) and param._runtime_param is None:
            descriptor = param.type_descriptor
            param._runtime_param = _Deferred(
                parameter_info=descriptor.parameter_info,
                annotation=descriptor.annotation,
                descriptor=descriptor,
            )
    return params


def _zsh_quoted(text: str) -> str:
    """Typer's quoting of a zsh completion's value and help."""
    for raw, quoted in (('"', '""'), ("'", "''"), ("$", "\\$"), ("`", "\\`"), (":", r"\\:")):
        text = text.replace(raw, quoted)
    return text


class _Zsh(ZshComplete):
    def format_completion(self, item: CompletionItem) -> str:
        if not item.help:
            return f'"{_zsh_quoted(item.value)}"'
        return f'"{_zsh_quoted(item.value)}":"{_zsh_quoted(item.help)}"'


class _Fish(FishComplete):
    def format_completion(self, item: CompletionItem) -> str:
        if not item.help:
            return f"{item.value}"
        one_line = re.sub(r"\s", " ", item.help)
        return f"{item.value}\t{one_line}"


class _PowerShell(PowerShellComplete):
    def format_completion(self, item: CompletionItem) -> str:
        return f"{item.value}:::{item.help or ' '}"


class Group(TyperGroup):
    """``asyncsnap`` itself: converters built when needed, completion help as written."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _defer(super().get_params(ctx))

    def _main_shell_completion(
        self, ctx_args: MutableMapping[str, Any], prog_name: str, complete_var: str | None = None
    ) -> None:
        # After Typer's own (registered when the group was built), under the same names.
        for cls, name in ((_Zsh, "zsh"), (_Fish, "fish"), (_PowerShell, "powershell")):
            add_completion_class(cls, name)
        add_completion_class(_PowerShell, "pwsh")
        super()._main_shell_completion(ctx_args, prog_name, complete_var)


class Command(TyperCommand):
    """Each command: its options' converters built when needed."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _defer(super().get_params(ctx))
