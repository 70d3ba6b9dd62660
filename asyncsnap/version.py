"""The installed version, in a module of its own so that any module can read it without
importing the package's public API (``asyncsnap/__init__.py`` imports nearly everything)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("asyncsnap")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
