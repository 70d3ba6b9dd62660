"""asyncsnap: consistent, concurrent PostgreSQL exports to checksummed NDJSON, and back.

The library API; the ``asyncsnap`` command is a thin layer over it::

    import anyio, asyncsnap

    result = anyio.run(lambda: asyncsnap.dump("postgresql:///app", output="backups"))
    print(result.path, result.rows)
"""

from .analysis.compare import compare
from .analysis.diff import DiffResult, diff
from .analysis.readers import ConvertResult, convert, read_arrow
from .api import restore
from .comparison import CompareResult
from .connection import ConnectionSpec
from .dump import DumpResult, TableResult, dump
from .errors import AsyncsnapError, ExitCode
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
