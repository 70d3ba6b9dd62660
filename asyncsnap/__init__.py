"""asyncsnap: consistent, concurrent PostgreSQL exports to checksummed NDJSON, and back.

The library API; the ``asyncsnap`` command is a thin layer over it::

    import anyio, asyncsnap

    result = anyio.run(lambda: asyncsnap.dump("postgresql:///app", output="backups"))
    print(result.path, result.rows)
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("asyncsnap")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .analysis import ConvertResult, convert, read_arrow
from .compare import CompareResult, compare
from .connection import ConnectionSpec
from .diff import DiffResult, diff
from .dump import DumpResult, TableResult, dump
from .errors import AsyncsnapError, ExitCode
from .restore import RestoreResult, restore
from .verify import VerifyResult, verify

__all__ = [
    "AsyncsnapError",
    "CompareResult",
    "ConnectionSpec",
    "ConvertResult",
    "DiffResult",
    "DumpResult",
    "ExitCode",
    "RestoreResult",
    "TableResult",
    "VerifyResult",
    "__version__",
    "compare",
    "convert",
    "diff",
    "dump",
    "read_arrow",
    "restore",
    "verify",
]
