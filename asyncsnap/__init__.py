"""asyncsnap: consistent, concurrent PostgreSQL exports to checksummed NDJSON, and back.

The library API; the ``asyncsnap`` command is a thin layer over it::

    import anyio, asyncsnap

    result = anyio.run(lambda: asyncsnap.dump("postgresql:///app", output="backups"))
    print(result.path, result.rows)

Each name is imported on first use (PEP 562): ``import asyncsnap``, and every import of a
submodule, which imports this package first, costs nothing, so that ``asyncsnap
--version``, ``--help`` and shell completion start without asyncpg, DuckDB or pyarrow.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and readers see; at run time, _PUBLIC below
    from .analysis.compare import compare
    from .analysis.diff import DiffResult, diff
    from .analysis.readers import ConvertResult, convert, read_arrow
    from .api import restore
    from .comparison import CompareResult
    from .connection import ConnectionSpec
    from .dump import DumpResult, TableResult, dump
    from .errors import AsyncsnapError, ExitCode
    from .increment import IncrementResult, dump_increment
    from .restore.result import RestoreResult
    from .verify import VerifyResult, verify
    from .version import __version__

__all__ = [
    "AsyncsnapError",
    "CompareResult",
    "ConnectionSpec",
    "ConvertResult",
    "DiffResult",
    "DumpResult",
    "ExitCode",
    "IncrementResult",
    "RestoreResult",
    "TableResult",
    "VerifyResult",
    "__version__",
    "compare",
    "convert",
    "diff",
    "dump",
    "dump_increment",
    "read_arrow",
    "restore",
    "verify",
]

# Where each public name is defined: the module imported the first time it is asked for.
_PUBLIC = {
    "compare": "analysis.compare",
    "DiffResult": "analysis.diff",
    "diff": "analysis.diff",
    "ConvertResult": "analysis.readers",
    "convert": "analysis.readers",
    "read_arrow": "analysis.readers",
    "restore": "api",
    "CompareResult": "comparison",
    "ConnectionSpec": "connection",
    "DumpResult": "dump",
    "TableResult": "dump",
    "dump": "dump",
    "AsyncsnapError": "errors",
    "ExitCode": "errors",
    "IncrementResult": "increment",
    "dump_increment": "increment",
    "RestoreResult": "restore.result",
    "VerifyResult": "verify",
    "verify": "verify",
    "__version__": "version",
}


def _resolve(name: str) -> Any:
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)


if not TYPE_CHECKING:  # a module __getattr__ would make every attribute Any to mypy

    def __getattr__(name: str) -> Any:
        if name not in _PUBLIC:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = _resolve(name)
        globals()[name] = value  # asked once
        return value


def __dir__() -> list[str]:
    return sorted({*(n for n in globals() if not n.startswith("_set_")), *__all__})


class _Function:
    """A public function named as a submodule (``dump``, ``verify``; ``restore``, a
    subpackage). Importing ``asyncsnap.dump`` binds the module to the package's attribute
    of that name, which would hide the function from then on; this descriptor on the
    package's class wins over that binding, so ``asyncsnap.dump`` is the function
    whichever was imported first. Another value set (a test's monkeypatch) is kept."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.slot = f"_set_{name}"

    def __get__(self, package: types.ModuleType | None, owner: type) -> Any:
        if package is None:
            return self
        if self.slot in package.__dict__:
            return package.__dict__[self.slot]
        return _resolve(self.name)

    def __set__(self, package: types.ModuleType, value: Any) -> None:
        if not isinstance(value, types.ModuleType):  # the import system binding a submodule
            package.__dict__[self.slot] = value

    def __delete__(self, package: types.ModuleType) -> None:
        package.__dict__.pop(self.slot, None)


class _Package(types.ModuleType):
    dump = _Function()
    restore = _Function()
    verify = _Function()


sys.modules[__name__].__class__ = _Package
