"""``asyncsnap drop-slot``: options, then ``asyncsnap.slot.drop_replication_slot`` through
the envelope."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer

from ..errors import AsyncsnapError
from .options import (
    DbnameOption,
    DebugOption,
    DsnArgument,
    HostOption,
    NoPasswordOption,
    PasswordPromptOption,
    PortOption,
    UserOption,
    connection_spec,
)

SHORT_HELP = "Drop a replication slot made by dump --slot."


def drop_slot_command(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="The slot's name, as given to dump --slot.")
    ],
    dsn: DsnArgument = None,
    dbname: DbnameOption = None,
    host: HostOption = None,
    port: PortOption = None,
    username: UserOption = None,
    no_password: NoPasswordOption = False,
    ask_password: PasswordPromptOption = False,
    keep_publication: Annotated[
        bool,
        typer.Option(
            "--keep-publication",
            help="Leave the publication asyncsnap created for the slot in place.",
        ),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Drop the replication slot NAME that a dump --slot created, and the publication
    asyncsnap created for it (never one it did not create).

    A slot holds WAL on the server until the next increment reads it: drop the slot of
    a chain you no longer extend. Its backups still restore; no increment can follow
    them. Exit codes as for dump; a slot that is not there is not an error (it says so).

    \b
    Examples:
      # The nightly chain is retired: free the WAL its slot holds
      asyncsnap drop-slot nightly -d shop
    """
    from ..slot import drop_replication_slot
    from .envelope import Envelope

    env = Envelope(debug=debug, dsn=dsn)
    with env.guard(AsyncsnapError):
        env.dsn = connection = connection_spec(
            dsn,
            dbname,
            host=host,
            port=port,
            user=username,
            no_password=no_password,
            ask_password=ask_password,
        )
    work = partial(drop_replication_slot, connection, name, keep_publication=keep_publication)
    result = env.run(work, left="nothing was dropped")
    if result.slot_dropped:
        held = ""
        if result.held_bytes is not None:
            from .progress import human_bytes

            held = f" (it kept {human_bytes(result.held_bytes)} of WAL on the server)"
        typer.echo(f"dropped replication slot {result.slot}{held}")
    else:
        typer.echo(f"no replication slot {result.slot} (nothing to drop)")
    if result.publication_dropped:
        typer.echo(f"dropped publication {result.slot}")
