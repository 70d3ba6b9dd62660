"""SIGINT and SIGTERM as a cancellation: how a command stops (``cli.envelope``), and
``verify --cluster``, which runs its tasks on an event loop of its own (``cluster``)."""

from __future__ import annotations

import logging
import signal

import anyio

from .errors import ExitCode, Interrupted


def interrupted(signum: int, left: str) -> Interrupted:
    """The error a run stopped by ``signum`` ends with; ``left`` says what it leaves."""
    return Interrupted(
        f"interrupted by {signal.Signals(signum).name}; {left}",
        exit_code=ExitCode.SIGINT if signum == signal.SIGINT else ExitCode.SIGTERM,
    )


def quiet_engine() -> None:
    """Once a signal stopped the run: the cluster engine's log silenced. A local cluster
    stopped while its workers were joining has its scheduler log each join it cut short as
    an ERROR with a traceback, noise under the one error line the command ends with. (Its
    log is kept otherwise: a worker that cannot start says why there.)"""
    logging.getLogger("distributed").setLevel(logging.CRITICAL + 1)


async def cancel_on_signal(scope: anyio.CancelScope, received: list[int]) -> None:
    """Wait for SIGINT or SIGTERM (in the main thread), then note it in ``received`` and
    cancel ``scope``. On leaving, the default actions are back (the receiver's doing)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            received.append(signum)
            quiet_engine()
            scope.cancel()
            return
