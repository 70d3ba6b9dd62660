"""A restore's options, gathered and checked once (``RestoreOptions.build``): every step
of the restore reads them here, none takes them one by one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..patterns import Selection

Mode = str  # "refuse" | "truncate" | "append"
MODES = ("refuse", "truncate", "append")


@dataclass(frozen=True)
class RestoreOptions:
    """See ``asyncsnap.restore`` for what each means."""

    selection: Selection
    jobs: int = 2
    mode: Mode = "refuse"
    single_transaction: bool = False
    disable_triggers: bool = False
    verify_first: bool = False
    ignore_missing_columns: bool = False
    clean: bool = False
    create: bool = False
    no_owner: bool = False
    no_privileges: bool = False
    schema_only: bool = False
    data_only: bool = False
    dry_run: bool = False
    drop_database: bool = False
    identities: tuple[Any, ...] = ()
    compare: bool = False
    to: str | None = None  # a chain's restore stops at this backup of it, or this LSN
    cluster: str | None = None  # the rows loaded by a Dask cluster's workers
    identity_file: str | None = None  # with cluster: the key, as a path each worker reads

    @classmethod
    def build(
        cls,
        *,
        tables: Iterable[str] = (),
        exclude_tables: Iterable[str] = (),
        schemas: Iterable[str] = (),
        exclude_schemas: Iterable[str] = (),
        identities: Sequence[Any] = (),
        **given: Any,
    ) -> RestoreOptions:
        """The options, or ``UsageError`` naming the first that is wrong (before the
        backup is opened or a server asked)."""
        options = cls(
            selection=Selection.from_strings(
                include=tables,
                exclude=exclude_tables,
                schemas=schemas,
                exclude_schemas=exclude_schemas,
            ),
            identities=tuple(identities),
            **given,
        )
        options.check()
        return options

    def check(self) -> None:
        if self.jobs < 1:
            raise UsageError(f"-j must be at least 1, not {self.jobs!r}", hint="try -j 2")
        if self.cluster is not None:
            self._check_cluster()
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}", hint="use refuse, truncate or append")
        if self.compare and (self.schema_only or self.dry_run):
            flag = "--schema-only" if self.schema_only else "--dry-run"
            raise UsageError(
                f"--compare compares the rows a restore loaded; {flag} loads none",
                hint="drop one of the two",
            )

    def _check_cluster(self) -> None:
        """What a restore on a cluster can spread: the rows, a table (or a split table's
        file) a task, each in its own transaction, as -j does; not one transaction."""
        from ..cluster import ClusterAddress

        ClusterAddress.parse(self.cluster or "")
        for given, option in (
            (self.single_transaction, "--single-transaction"),
            (self.mode == "truncate", "--truncate"),
        ):
            if given:
                raise UsageError(
                    f"{option} loads every row in one transaction on one connection: it "
                    "cannot be spread over a cluster",
                    hint=f"leave out --cluster, or {option}",
                )
        if self.identities and self.identity_file is None:
            raise UsageError(
                "a restore on a cluster takes the key as a file each worker reads",
                hint="give --identity FILE at a path every worker has",
            )

    def check_drop_database(self) -> None:
        """After the backup is opened and checked, as it always was."""
        if self.drop_database and not (self.create and self.clean):
            raise UsageError(
                "--drop-database is for --create --clean (which drops the whole database)",
                hint="add --create --clean, or drop --drop-database",
            )
