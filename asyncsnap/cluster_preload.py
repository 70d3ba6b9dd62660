"""Imported by a local cluster's fork server alone, as it starts (``cluster.start_fork_server``
puts it in the server's preload, after distributed, whose import gives Dask its defaults):
the server's environment made what Dask's nanny sets for a spawned worker, which the
workers forked from it inherit, and SIGINT ignored (the coordinator stops its workers).

That is Dask's ``distributed.nanny.pre-spawn-environ`` (thread pools of one thread; a
variable already set winning, as Dask has it), but not the allocator's setting (a worker
allocates as a local dump does: ``cluster.ALLOCATOR_AS_A_LOCAL_DUMPS``), and the variable
that has a worker name itself in ``ps`` ("dask worker [address]"). Set here rather than in
the coordinator before the server starts: reading Dask's configuration there meant
importing distributed (0.45 s of CPU) on the coordinator's event loop first, while the
server waited to start.
"""

from __future__ import annotations

import os
import signal

import dask.config

# (an ImportError when distributed is not installed, which the fork server passes over:
# the coordinator says so)
from distributed.proctitle import enable_proctitle_on_children

from .cluster import ALLOCATOR_AS_A_LOCAL_DUMPS


def _set_environment() -> None:
    for name, value in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items():
        if value is not None and name not in ALLOCATOR_AS_A_LOCAL_DUMPS:
            os.environ.setdefault(name, str(value))
    enable_proctitle_on_children()  # type: ignore[no-untyped-call]


_set_environment()
# Ctrl-C at a terminal reaches the whole foreground group, the workers too, which then
# printed KeyboardInterrupt tracebacks from Dask's event loop: the coordinator stops
# them itself. The server's children get its handlers of now (multiprocessing's fork
# server takes them after its preload), so they start ignoring it.
signal.signal(signal.SIGINT, signal.SIG_IGN)
